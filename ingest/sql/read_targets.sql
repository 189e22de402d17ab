-- read_targets: the forward.read spans whose kv_events rows this batch derives here: the batch's
-- new ones still to resolve (batch_read_targets, from local_read_targets.sql: all of them, or,
-- where the batch's rows were derived span-locally, those whose parent forward is not in the
-- batch), plus stored ones waiting (ingest_pending kind 'read') for a parent forward that this
-- batch brought.
-- Reads: batch_read_targets, new_spans, ingest_pending. Writes: temp tables read_targets (the
-- batch's; read_targets_pending.sql adds the stored ones) and read_pending_now (the waiting ones
-- whose parent came now). The stored-span lookup only runs on the few pending rows that match.
CREATE OR REPLACE TEMP TABLE read_targets AS
SELECT * FROM batch_read_targets;

CREATE OR REPLACE TEMP TABLE read_pending_now AS
SELECT p.trace_id, p.span_id
FROM ingest_pending AS p
SEMI JOIN new_spans AS n ON n.trace_id = p.trace_id AND n.span_id = p.parent_span_id
WHERE p.kind = 'read';
