-- analysis: findings
-- description: All race findings in the conventions' "Findings" shape: abort_before_write_complete,
--   unsafe_free, read_before_load and page_hazard, with the raw and skew-corrected windows.
-- returns: one row per finding: finding_id, kind, instance, tp_rank, kv_pool, pages, layers,
--   culprit_rid, victim_rid, window_start_ns, window_end_ns (clock of `instance`), confidence,
--   evidence_span_ids, then window_end_raw_ns (the write end as the culprit's host recorded it),
--   window_end_earliest_ns, window_end_latest_ns (over every allowed clock offset), detail
--   (page_hazard shape), service_version.
-- requires: abort_before_write_complete, unsafe_free, read_before_load, page_hazard
WITH all_findings AS (
    SELECT * EXCLUDE (skew_bounded, free_seen, transfer_span_id, release_span_id), NULL AS detail
    FROM abort_before_write_complete
    UNION ALL BY NAME
    SELECT * EXCLUDE (skew_bounded, free_seen), NULL AS detail FROM unsafe_free
    UNION ALL BY NAME
    SELECT * EXCLUDE (load_span_id, read_span_id, max_early_ns), window_end_ns AS window_end_raw_ns,
           window_end_ns AS window_end_earliest_ns, window_end_ns AS window_end_latest_ns, NULL AS detail
    FROM read_before_load
    UNION ALL BY NAME
    SELECT * EXCLUDE (shape), window_end_ns AS window_end_raw_ns, NULL AS window_end_earliest_ns,
           NULL AS window_end_latest_ns, shape AS detail
    FROM page_hazard
)
SELECT
    finding_id, kind, instance, CAST(tp_rank AS INTEGER) AS tp_rank, kv_pool,
    CAST(pages AS INTEGER[]) AS pages, CAST(layers AS INTEGER[]) AS layers,
    culprit_rid, victim_rid,
    CAST(window_start_ns AS BIGINT) AS window_start_ns, CAST(window_end_ns AS BIGINT) AS window_end_ns,
    confidence, CAST(evidence_span_ids AS VARCHAR[]) AS evidence_span_ids,
    CAST(window_end_raw_ns AS BIGINT) AS window_end_raw_ns,
    CAST(window_end_earliest_ns AS BIGINT) AS window_end_earliest_ns,
    CAST(window_end_latest_ns AS BIGINT) AS window_end_latest_ns,
    CAST(detail AS VARCHAR) AS detail,
    service_version
FROM all_findings
ORDER BY kind, instance, tp_rank, kv_pool, window_start_ns, finding_id
