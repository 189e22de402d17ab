-- analysis: findings
-- description: All race findings in the conventions' "Findings" shape: abort_before_write_complete,
--   unsafe_free, read_before_load and page_hazard (page level), abort_during_transfer (request
--   level, stock SGLang traces), with the raw and skew-corrected windows.
-- returns: one row per finding: finding_id, kind, instance, tp_rank, kv_pool, pages, layers,
--   culprit_rid, victim_rid, window_start_ns, window_end_ns (clock of `instance`), confidence,
--   evidence_span_ids, then window_end_raw_ns (the write end as the culprit's host recorded it),
--   window_end_earliest_ns, window_end_latest_ns (over every allowed clock offset), detail
--   (page_hazard shape), culprit_clock_host (host whose clock the write end is on, cross-host
--   kinds), refute_offset_ns (the finding holds unless culprit_clock_host's clock is at least this
--   far ahead of the instance's host's; NULL when one clock decides), refute_margin (the same in
--   words, with the largest offset the ordering evidence allows), service_version.
-- requires: abort_before_write_complete, unsafe_free, read_before_load, page_hazard, abort_during_transfer
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
    UNION ALL BY NAME
    SELECT * EXCLUDE (abort_ns, write_end_source), NULL AS detail FROM abort_during_transfer
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
    service_version,
    CAST(culprit_clock_host AS VARCHAR) AS culprit_clock_host,
    CAST(refute_offset_ns AS BIGINT) AS refute_offset_ns,
    CASE WHEN refute_offset_ns IS NULL THEN NULL
         ELSE CASE WHEN refute_offset_ns > 0
                   THEN printf('holds unless the clock of %s is more than %s behind %s''s', instance,
                               duration_words(refute_offset_ns), culprit_clock_host)
                   ELSE printf('holds only if the clock of %s is at least %s ahead of %s''s', instance,
                               duration_words(-refute_offset_ns), culprit_clock_host) END
              || CASE WHEN window_end_earliest_ns IS NULL THEN ' (no ordering evidence bounds it from that side)'
                      ELSE printf(' (the ordering evidence allows at most %s)',
                                  duration_words(window_end_raw_ns - window_end_earliest_ns)) END
    END AS refute_margin
FROM all_findings
ORDER BY kind, instance, tp_rank, kv_pool, window_start_ns, finding_id
