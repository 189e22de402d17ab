-- stage_walk_batch: the first stage walk, of the batch's own slices through the batch's own
-- spans (stage_walk.sql, run span-locally by derive_rows in the decode worker: batch_stage_walk),
-- starts stage_walk_out; stage_walk_stored.sql replaces the rows of the slices it walks again.
-- Reads: batch_stage_walk. Writes: temp table stage_walk_out (trace_id, span_id, rid, room,
-- resolved). normalise_stages.sql drops it.
CREATE OR REPLACE TEMP TABLE stage_walk_out AS
SELECT * FROM batch_stage_walk;
