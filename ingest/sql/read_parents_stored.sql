-- read_parents_stored: parents of read_orphans stored by earlier batches or files. Reads:
-- read_orphans, spans. Writes: read_parents (appends). Run only when read_orphans is not empty.
INSERT INTO read_parents
SELECT s.trace_id, s.span_id, s.attributes::VARCHAR
FROM spans AS s
SEMI JOIN read_orphans AS o ON o.trace_id = s.trace_id AND o.parent_span_id = s.span_id
WHERE s.name = 'forward';
