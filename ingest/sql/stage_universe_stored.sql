-- stage_universe_stored: what the second stage walk (stage_walk.sql) walks: the slices the first
-- walk left unresolved (their ancestors came in earlier batches or files) and the pending ones,
-- through every stored span of their traces. Reads: spans, stage_targets, stage_walk_out.
-- Writes: temp tables stage_walk_in (the slices) and stage_universe (the spans), replaced. Run
-- only when there is something to resolve (a pending slice in stage_targets, or an unresolved
-- one in stage_walk_out).
CREATE OR REPLACE TEMP TABLE stage_walk_in AS
SELECT t.*
FROM stage_targets AS t
WHERE t.was_pending
   OR EXISTS (SELECT 1 FROM stage_walk_out AS o
              WHERE o.trace_id = t.trace_id AND o.span_id = t.span_id AND NOT o.resolved);

CREATE OR REPLACE TEMP TABLE stage_universe AS
SELECT s.trace_id, s.span_id, s.parent_span_id, s.rid, s.attributes->>'$.bootstrap_room' AS room
FROM spans AS s
SEMI JOIN (SELECT DISTINCT trace_id FROM stage_walk_in) AS w ON w.trace_id = s.trace_id;
