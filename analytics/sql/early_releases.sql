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
-- requires: transfer_windows
WITH frees AS (
    SELECT span_id, rid, instance_id, tp_rank, kv_pool, page_ids, page_lo, page_hi, start_ns, free_mode, free_reason
    FROM kv_events WHERE op = 'free' AND rid IS NOT NULL
),
abort_spans AS (
    SELECT rid, instance_id, list(span_id ORDER BY time_ns) AS abort_span_ids, min(time_ns) AS abort_ns
    FROM aborts WHERE rid IS NOT NULL
    GROUP BY ALL
),
freed_early AS (
    SELECT t.*, f.span_id AS release_span_id, f.start_ns AS release_ns,
           sorted_intersection(t.page_ids, f.page_ids) AS released_pages,
           true AS free_seen, f.free_mode, f.free_reason
    FROM transfer_windows t
    JOIN frees f
      ON f.rid = t.rid AND f.instance_id = t.instance_id AND f.tp_rank = t.tp_rank AND f.kv_pool = t.kv_pool
    WHERE f.start_ns < coalesce(t.end_latest_ns, 9223372036854775807)
      AND page_set_overlap(t.page_lo, t.page_hi, t.page_ids, f.page_lo, f.page_hi, f.page_ids)
),
aborted_without_free AS (
    SELECT t.*, a.abort_span_ids[1] AS release_span_id, a.abort_ns AS release_ns,
           t.page_ids AS released_pages, false AS free_seen,
           CAST(NULL AS VARCHAR) AS free_mode, 'aborted' AS free_reason
    FROM transfer_windows t
    JOIN abort_spans a ON a.rid = t.rid AND a.instance_id = t.instance_id
    WHERE a.abort_ns < coalesce(t.end_latest_ns, 9223372036854775807)
      AND NOT EXISTS (
          SELECT 1 FROM frees f
          WHERE f.rid = t.rid AND f.instance_id = t.instance_id AND f.tp_rank = t.tp_rank AND f.kv_pool = t.kv_pool
      )
),
releases AS (
    SELECT * FROM freed_early
    UNION ALL BY NAME
    SELECT * FROM aborted_without_free
),
transferred AS (
    SELECT bootstrap_room, host_name, max(end_ns) AS transferred_ns
    FROM request_stages WHERE name = 'decode_transferred' AND bootstrap_room IS NOT NULL
    GROUP BY ALL
)
SELECT r.*, coalesce(a.abort_span_ids, []) AS abort_span_ids
FROM releases r
LEFT JOIN abort_spans a ON a.rid = r.rid AND a.instance_id = r.instance_id
LEFT JOIN transferred d ON d.bootstrap_room = r.bootstrap_room AND d.host_name = r.decode_host
WHERE NOT coalesce(d.transferred_ns <= r.release_ns, false)
  AND NOT (coalesce(r.free_mode, '') = 'deferred'
           AND NOT coalesce(r.skew_bounded AND r.release_ns < r.end_earliest_ns, false))
