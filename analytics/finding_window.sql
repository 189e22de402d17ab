-- A finding's window of KV events: the queries behind analytics/finding_window.py, shared by
-- `kvtrace replay export` (replay/export.py) and the app's finding view (app/data/findings.py).
-- Not an analysis (those are analytics/sql/*.sql, one result table each): these read one finding
-- or one window, with parameters. Sections start with `-- name: NAME`; times are ns.

-- name: finding
-- The finding, and the start of the culprit's access in flight over it (its transfer or load on
-- the finding's pool that ended at most a minute before the window): the window opens there.
SELECT f.*,
       (SELECT min(e.start_ns) FROM kv_events AS e
        WHERE e.instance_id = f.instance AND e.tp_rank = f.tp_rank AND e.kv_pool = f.kv_pool
          AND e.rid = f.culprit_rid AND e.op IN ('transfer', 'load')
          AND e.end_ns >= f.window_start_ns - 60000000000) AS access_start_ns
FROM findings AS f
WHERE f.finding_id = $finding_id

-- name: instance_host
-- The host whose clock an instance's own spans are on (one host, one clock).
SELECT clock_host FROM kv_events
WHERE emit_instance_id = $instance AND clock_host IS NOT NULL
LIMIT 1

-- name: clock_offsets
-- Other hosts' clocks against the instance's host: offset = that clock - the instance's, estimated
-- by skew_bounds where it could be.
SELECT prefill_host, offset_est_ns FROM skew_bounds
WHERE decode_host = $host AND offset_est_ns IS NOT NULL
ORDER BY prefill_host

-- name: events
-- Every KV event on ($instance, $tp_rank) of the requests $rids and, with $neighbours, of every
-- request with an event overlapping [$lo_ns - $reach_ns, $hi_ns + $reach_ns] (raw times: reach is
-- the largest clock offset): their whole lifetimes there, allocs to frees, every pool. Each row
-- carries its page set as runs (run_starts[i]..run_ends[i]), and the offset that moves it onto
-- the instance's clock (0 on that clock or where no estimate exists; skew_known says which).
-- The neighbour search is a time-range filter (zone maps prune it); the rest filters by rid.
WITH near AS (
    SELECT DISTINCT rid FROM kv_events
    WHERE $neighbours AND instance_id = $instance AND tp_rank = $tp_rank AND rid IS NOT NULL
      AND end_ns >= $lo_ns - $reach_ns AND start_ns <= $hi_ns + $reach_ns
),
picked AS (
    SELECT DISTINCT unnest($rids::VARCHAR[]) AS rid
    UNION
    SELECT rid FROM near
),
ev AS (
    SELECT e.*, coalesce(list_sort(e.page_ids), []::INTEGER[]) AS pages,
           e.clock_host IS NOT NULL AND e.clock_host IS DISTINCT FROM $host AS foreign_clock,
           list_extract($offset_ns::BIGINT[], list_position($offset_hosts::VARCHAR[], e.clock_host)) AS offset_est_ns
    FROM kv_events AS e
    WHERE e.instance_id = $instance AND e.tp_rank = $tp_rank AND e.rid IN (SELECT rid FROM picked)
)
SELECT span_id, op, rid, kv_pool, pages AS page_ids,
       CASE WHEN len(pages) = 0 THEN []::INTEGER[]
            ELSE [x[1] FOR x IN list_zip(pages, [NULL::INTEGER] || list_slice(pages, 1, len(pages) - 1)) IF x[2] IS NULL OR x[1] <> x[2] + 1]
       END AS run_starts,
       CASE WHEN len(pages) = 0 THEN []::INTEGER[]
            ELSE [x[1] FOR x IN list_zip(pages, list_slice(pages, 2, len(pages)) || [NULL::INTEGER]) IF x[2] IS NULL OR x[2] <> x[1] + 1]
       END AS run_ends,
       start_ns, end_ns, clock_host, emit_instance_id,
       coalesce(layer_offsets_ns, []::BIGINT[]) AS layer_offsets_ns, free_mode, free_reason, status_code,
       bootstrap_room,
       CASE WHEN foreign_clock THEN coalesce(offset_est_ns, 0) ELSE 0 END AS clock_offset_ns,
       foreign_clock AND offset_est_ns IS NOT NULL AS skew_known
FROM ev
ORDER BY start_ns, span_id, rid
LIMIT $max_rows
