-- read_parents: the parent forward of each read target, looked up first among this batch's new
-- forward spans. Reads: batch_forwards (local_forwards.sql), read_targets. Writes: temp tables
-- read_parents (read_parents_stored.sql adds stored parents) and read_orphans (targets whose
-- parent is not in this batch).
CREATE OR REPLACE TEMP TABLE read_parents AS
SELECT n.trace_id, n.span_id, n.rids, n.forward_batch_id, n.forward_mode
FROM batch_forwards AS n
SEMI JOIN read_targets AS t ON t.trace_id = n.trace_id AND t.parent_span_id = n.span_id;

CREATE OR REPLACE TEMP TABLE read_orphans AS
SELECT DISTINCT t.trace_id, t.parent_span_id
FROM read_targets AS t
ANTI JOIN read_parents AS p ON p.trace_id = t.trace_id AND p.span_id = t.parent_span_id
WHERE t.parent_span_id IS NOT NULL;
