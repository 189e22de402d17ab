-- analysis: early_releases
-- description: Transfers whose owning request released the destination pages on the decode side
--   before the write could have completed (for some allowed clock offset): the common first step
--   of abort_before_write_complete and unsafe_free. A request.abort with no kv.free span in the
--   trace (span lost or sampled away) counts as a release at the abort, with less confidence.
--   Ordering evidence clears a release that is only *possibly* early: the decode side saw the
--   transfer finish (decode_transferred end, same clock) before it, or the free is `deferred` (it
--   waits for the write to drain, the fix of PR #35049). A deferred free that is *certainly* before
--   the write end (the deferral was defeated, SGLang #38961) stays.
-- returns: one row per (transfer span, release): the transfer_windows columns, release_span_id,
--   release_ns (decode clock), released_pages (transfer pages the release returned, sorted),
--   free_seen (false when only the abort was seen), free_mode, free_reason, abort_span_ids.
--   Formulation: keys, times and page ranges first; the page lists (copied into a join's hash
--   table, the costly payload) are read for the few early pairs only, at the end.
-- requires: transfer_windows
WITH frees AS NOT MATERIALIZED (
    SELECT trace_id, span_id, rid, instance_id, tp_rank, kv_pool, page_lo, page_hi, start_ns, free_mode, free_reason
    FROM kv_events WHERE op = 'free' AND rid IS NOT NULL
),
abort_spans AS (
    SELECT rid, instance_id, list(span_id ORDER BY time_ns) AS abort_span_ids, min(time_ns) AS abort_ns
    FROM aborts WHERE rid IS NOT NULL
    GROUP BY ALL
),
-- the frees of requests that have a request.abort (an abort counts as a release only without them)
aborted_frees AS (
    SELECT f.rid, f.instance_id, f.tp_rank, f.kv_pool
    FROM frees f
    JOIN abort_spans a ON a.rid = f.rid AND a.instance_id = f.instance_id
),
freed_early AS (
    SELECT t.span_id, t.trace_id, t.rid, t.instance_id, t.bootstrap_room, t.decode_host, t.end_earliest_ns,
           t.skew_bounded, f.span_id AS release_span_id, f.trace_id AS release_trace_id, f.start_ns AS release_ns,
           true AS free_seen, f.free_mode, f.free_reason
    FROM transfer_windows t
    JOIN frees f
      ON f.rid = t.rid AND f.instance_id = t.instance_id AND f.tp_rank = t.tp_rank AND f.kv_pool = t.kv_pool
    WHERE f.start_ns < coalesce(t.end_latest_ns, 9223372036854775807)
      AND page_ranges_overlap(t.page_lo, t.page_hi, f.page_lo, f.page_hi)
),
aborted_without_free AS (
    SELECT t.span_id, t.trace_id, t.rid, t.instance_id, t.bootstrap_room, t.decode_host, t.end_earliest_ns,
           t.skew_bounded, a.abort_span_ids[1] AS release_span_id, CAST(NULL AS VARCHAR) AS release_trace_id,
           a.abort_ns AS release_ns, false AS free_seen, CAST(NULL AS VARCHAR) AS free_mode,
           'aborted' AS free_reason
    FROM transfer_windows t
    JOIN abort_spans a ON a.rid = t.rid AND a.instance_id = t.instance_id
    WHERE a.abort_ns < coalesce(t.end_latest_ns, 9223372036854775807)
      AND NOT EXISTS (
          SELECT 1 FROM aborted_frees f
          WHERE f.rid = t.rid AND f.instance_id = t.instance_id AND f.tp_rank = t.tp_rank AND f.kv_pool = t.kv_pool
      )
),
releases AS MATERIALIZED (
    SELECT * FROM freed_early
    UNION ALL
    SELECT * FROM aborted_without_free
),
transferred AS (
    SELECT bootstrap_room, host_name, max(end_ns) AS transferred_ns
    FROM request_stages WHERE name = 'decode_transferred' AND bootstrap_room IS NOT NULL
      AND bootstrap_room IN (SELECT bootstrap_room FROM releases)
    GROUP BY ALL
),
early AS MATERIALIZED (
    SELECT r.* FROM releases r
    LEFT JOIN transferred d ON d.bootstrap_room = r.bootstrap_room AND d.host_name = r.decode_host
    WHERE NOT coalesce(d.transferred_ns <= r.release_ns, false)
      AND NOT (coalesce(r.free_mode, '') = 'deferred'
               AND NOT coalesce(r.skew_bounded AND r.release_ns < r.end_earliest_ns, false))
)
SELECT t.span_id, t.trace_id, t.rid, t.bootstrap_room, t.instance_id, t.tp_rank, t.kv_pool, p.page_ids,
       t.page_lo, t.page_hi, t.prefill_host, t.decode_host, t.service_version, t.status_code, t.start_raw_ns,
       t.end_raw_ns, t.offset_lo_ns, t.offset_hi_ns, t.offset_est_ns, t.start_est_ns, t.end_est_ns,
       t.end_earliest_ns, t.end_latest_ns, t.skew_bounded, e.release_span_id, e.release_ns,
       CASE WHEN e.free_seen THEN sorted_intersection(p.page_ids, f.page_ids) ELSE p.page_ids END AS released_pages,
       e.free_seen, e.free_mode, e.free_reason, coalesce(a.abort_span_ids, []) AS abort_span_ids
FROM early e
JOIN transfer_windows t ON t.span_id = e.span_id AND t.trace_id = e.trace_id
JOIN (SELECT span_id, trace_id, page_ids FROM kv_events
      WHERE op = 'transfer' AND span_id IN (SELECT span_id FROM early)) p
  ON p.span_id = e.span_id AND p.trace_id = e.trace_id
LEFT JOIN (SELECT span_id, trace_id, page_ids FROM kv_events
           WHERE op = 'free' AND span_id IN (SELECT release_span_id FROM early)) f
  ON f.span_id = e.release_span_id AND f.trace_id = e.release_trace_id
LEFT JOIN abort_spans a ON a.rid = e.rid AND a.instance_id = e.instance_id
WHERE NOT e.free_seen OR pages_intersect(p.page_ids, f.page_ids)
