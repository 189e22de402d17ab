-- analysis: transfer_windows
-- description: Every kv.transfer (prefill -> decode RDMA/TCP write) with its times moved onto the
--   destination decode host's clock, and the range of write ends the skew bounds allow.
-- returns: one row per transfer span: span_id, trace_id, rid, bootstrap_room, instance_id, tp_rank,
--   kv_pool, page_lo, page_hi, prefill_host, decode_host, service_version, status_code,
--   start_raw_ns, end_raw_ns (prefill clock), offset_lo_ns, offset_hi_ns, offset_est_ns,
--   start_est_ns, end_est_ns (decode clock, best estimate), end_earliest_ns, end_latest_ns (decode
--   clock over every allowed offset; NULL = unbounded on that side), skew_bounded (both bounds known).
--   Without the page lists (the costly payload: its readers, early_releases and page_hazard, join
--   them from kv_events for the few transfers they find). A table: computed once for both readers.
-- requires: skew_bounds
WITH instance_hosts AS (
    SELECT instance_id, any_value(host_name) AS host_name
    FROM (
        SELECT instance_id, host_name FROM requests WHERE instance_id IS NOT NULL AND host_name IS NOT NULL
        UNION ALL
        SELECT emit_instance_id, clock_host FROM kv_events
        WHERE op = 'alloc' AND emit_instance_id IS NOT NULL AND clock_host IS NOT NULL
    )
    GROUP BY instance_id
),
transfers AS (
    SELECT t.span_id, t.trace_id, t.rid, t.bootstrap_room, t.instance_id, t.tp_rank, t.kv_pool,
           t.page_lo, t.page_hi, t.clock_host AS prefill_host, h.host_name AS decode_host,
           t.service_version, t.status_code, t.start_ns, t.end_ns
    FROM kv_events t
    LEFT JOIN instance_hosts h ON h.instance_id = t.instance_id
    WHERE t.op = 'transfer'
),
offsets AS (
    SELECT t.*,
           CASE WHEN t.prefill_host = t.decode_host THEN 0 ELSE b.offset_lo_ns END AS lo,
           CASE WHEN t.prefill_host = t.decode_host THEN 0 ELSE b.offset_hi_ns END AS hi,
           CASE WHEN t.prefill_host = t.decode_host THEN 0 ELSE coalesce(b.offset_est_ns, 0) END AS est
    FROM transfers t
    LEFT JOIN skew_bounds b ON b.prefill_host = t.prefill_host AND b.decode_host = t.decode_host
)
SELECT
    span_id, trace_id, rid, bootstrap_room, instance_id, tp_rank, kv_pool, page_lo, page_hi,
    prefill_host, decode_host, service_version, status_code,
    start_ns AS start_raw_ns,
    end_ns AS end_raw_ns,
    lo AS offset_lo_ns,
    hi AS offset_hi_ns,
    est AS offset_est_ns,
    to_decode_clock(start_ns, est) AS start_est_ns,
    to_decode_clock(end_ns, est) AS end_est_ns,
    to_decode_clock(end_ns, hi) AS end_earliest_ns,
    to_decode_clock(end_ns, lo) AS end_latest_ns,
    lo IS NOT NULL AND hi IS NOT NULL AND lo <= hi AS skew_bounded
FROM offsets
