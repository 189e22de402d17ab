-- analysis: unsafe_free
-- description: Near misses of bug 1: a request's destination pages released while the transfer into
--   them was still in flight, with no reuse by another request seen before the write completed.
-- returns: one row per (transfer, release) in the findings columns (victim_rid NULL; window =
--   release .. write end on the decode clock) plus window_end_raw_ns, window_end_earliest_ns,
--   window_end_latest_ns, skew_bounded, free_seen, service_version.
-- requires: early_releases, abort_before_write_complete
SELECT
    substr(md5(concat_ws('|', 'unsafe_free', e.span_id, e.release_span_id)), 1, 16) AS finding_id,
    'unsafe_free' AS kind,
    e.instance_id AS instance,
    e.tp_rank,
    e.kv_pool,
    e.released_pages AS pages,
    CAST([] AS INTEGER[]) AS layers,
    e.rid AS culprit_rid,
    CAST(NULL AS VARCHAR) AS victim_rid,
    e.release_ns AS window_start_ns,
    greatest(e.end_est_ns, e.release_ns) AS window_end_ns,
    CASE WHEN e.skew_bounded AND e.free_seen AND e.release_ns < e.end_earliest_ns THEN 'certain' ELSE 'possible' END
        AS confidence,
    list_concat([e.span_id, e.release_span_id], list_without(e.abort_span_ids, e.release_span_id))
        AS evidence_span_ids,
    e.end_raw_ns AS window_end_raw_ns,
    e.end_earliest_ns AS window_end_earliest_ns,
    e.end_latest_ns AS window_end_latest_ns,
    e.skew_bounded,
    e.free_seen,
    e.prefill_host AS culprit_clock_host,
    CASE WHEN e.prefill_host IS DISTINCT FROM e.decode_host THEN e.end_raw_ns - e.release_ns END AS refute_offset_ns,
    e.service_version
FROM early_releases e
WHERE NOT EXISTS (
    SELECT 1 FROM abort_before_write_complete f
    WHERE f.transfer_span_id = e.span_id AND f.release_span_id = e.release_span_id
)
ORDER BY instance, tp_rank, kv_pool, window_start_ns, finding_id
