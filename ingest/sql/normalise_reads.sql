-- normalise_reads: the read targets' kv_events rows (read_rows_now: read_rows.sql over
-- read_targets and read_parents) stored; targets without a stored parent wait in ingest_pending
-- (kind 'read') and are derived when the parent arrives. The batch's targets whose parent forward
-- came in the same batch got their rows span-locally (batch_reads, stored with the batch's other
-- derived rows); read_targets holds the rest.
-- Reads: read_rows_now, read_targets, read_parents, read_pending_now. Writes: kv_events (inserts),
-- ingest_pending (resolved 'read' rows deleted, targets still without a parent added).
INSERT INTO kv_events BY NAME
SELECT * FROM read_rows_now;

DELETE FROM ingest_pending AS p
WHERE p.kind = 'read'
  AND EXISTS (SELECT 1 FROM read_pending_now AS r WHERE r.trace_id = p.trace_id AND r.span_id = p.span_id)
  AND EXISTS (SELECT 1 FROM read_parents AS f, read_targets AS t
              WHERE t.trace_id = p.trace_id AND t.span_id = p.span_id
                AND f.trace_id = t.trace_id AND f.span_id = t.parent_span_id);

INSERT INTO ingest_pending
SELECT t.trace_id, t.span_id, t.parent_span_id, 'read'
FROM read_targets AS t
ANTI JOIN read_parents AS f ON f.trace_id = t.trace_id AND f.span_id = t.parent_span_id
ANTI JOIN read_pending_now AS r ON r.trace_id = t.trace_id AND r.span_id = t.span_id;
