-- stage_universe_batch: the first stage walk's universe, this batch's new spans, and what it
-- walks, the batch's own slices. Reads: batch_stage_universe (local_stage_universe.sql),
-- stage_targets. Writes: temp tables stage_universe (trace_id, span_id, parent_span_id, rid,
-- room) and stage_walk_in (the slices to walk).
CREATE OR REPLACE TEMP TABLE stage_universe AS
SELECT * FROM batch_stage_universe;

CREATE OR REPLACE TEMP TABLE stage_walk_in AS
SELECT * FROM stage_targets WHERE NOT was_pending;
