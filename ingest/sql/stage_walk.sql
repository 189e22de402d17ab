-- stage_walk: for each stage slice in stage_walk_in, walk up its parents in stage_universe and
-- take the nearest rid and bootstrap_room (its own first). A slice is resolved when both are
-- known or the walk reached a root (no parent); otherwise an ancestor is still missing.
-- Reads: stage_walk_in, stage_universe. Writes: temp table stage_walk_out (created when missing;
-- the rows of the slices walked now replace earlier ones). normalise_stages.sql drops it.
CREATE TEMP TABLE IF NOT EXISTS stage_walk_out (
    trace_id VARCHAR, span_id VARCHAR, rid VARCHAR, room VARCHAR, resolved BOOLEAN
);

DELETE FROM stage_walk_out AS o
WHERE EXISTS (SELECT 1 FROM stage_walk_in AS w WHERE w.trace_id = o.trace_id AND w.span_id = o.span_id);

INSERT INTO stage_walk_out
WITH RECURSIVE walk(trace_id, span_id, cur, rid, room, at_root, depth) AS (
    SELECT trace_id, span_id, parent_span_id, rid, room, parent_span_id IS NULL, 0
    FROM stage_walk_in
    UNION ALL
    SELECT w.trace_id, w.span_id, u.parent_span_id, coalesce(w.rid, u.rid), coalesce(w.room, u.room),
           u.parent_span_id IS NULL, w.depth + 1
    FROM walk AS w
    JOIN stage_universe AS u ON u.trace_id = w.trace_id AND u.span_id = w.cur
    WHERE NOT w.at_root AND (w.rid IS NULL OR w.room IS NULL) AND w.depth < 64
)
SELECT trace_id, span_id, arg_max(rid, depth), arg_max(room, depth),
       bool_or(at_root OR (rid IS NOT NULL AND room IS NOT NULL))
FROM walk
GROUP BY trace_id, span_id;
