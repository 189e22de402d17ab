-- stage_targets: SGLang stage slices whose request_stages rows this batch derives: the batch's
-- new ones (batch_stage_targets, from local_stage_targets.sql), plus stored ones still waiting
-- (ingest_pending kind 'stage') for a rid-carrying ancestor in a trace this batch touched.
-- Reads: batch_stage_targets, new_spans, ingest_pending. Writes: temp tables stage_targets
-- (was_pending false; stage_targets_pending.sql adds the stored ones) and stage_pending_now.
CREATE OR REPLACE TEMP TABLE stage_targets AS
SELECT *, false AS was_pending FROM batch_stage_targets;

CREATE OR REPLACE TEMP TABLE stage_pending_now AS
SELECT p.trace_id, p.span_id
FROM ingest_pending AS p
SEMI JOIN new_spans AS n ON n.trace_id = p.trace_id
WHERE p.kind = 'stage';
