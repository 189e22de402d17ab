-- stage_walk: for each stage slice in walk_in, walk up its parents through walk_steps and take
-- the nearest rid and bootstrap_room (its own first). A slice is resolved when both are known or
-- the walk reached a root (no parent); otherwise an ancestor is still missing.
-- Reads: views walk_in (the slices) and walk_steps (the spans a walk may pass: trace_id, span_id,
-- parent_span_id, rid, room), which merge.walk_stages points at the tables it walks: a batch's
-- own slices through its own spans (derive_rows, span-local), or slices still unresolved through
-- the stored spans of their traces (stage_universe_stored.sql). Gives: one row per slice
-- (trace_id, span_id, rid, room, resolved).
WITH RECURSIVE walk(trace_id, span_id, cur, rid, room, at_root, depth) AS (
    SELECT trace_id, span_id, parent_span_id, rid, room, parent_span_id IS NULL, 0
    FROM walk_in
    UNION ALL
    SELECT w.trace_id, w.span_id, u.parent_span_id, coalesce(w.rid, u.rid), coalesce(w.room, u.room),
           u.parent_span_id IS NULL, w.depth + 1
    FROM walk AS w
    JOIN walk_steps AS u ON u.trace_id = w.trace_id AND u.span_id = w.cur
    WHERE NOT w.at_root AND (w.rid IS NULL OR w.room IS NULL) AND w.depth < 64
)
SELECT trace_id, span_id, arg_max(rid, depth) AS rid, arg_max(room, depth) AS room,
       bool_or(at_root OR (rid IS NOT NULL AND room IS NOT NULL)) AS resolved
FROM walk
GROUP BY trace_id, span_id
