-- read_parents_stored: parents of read_orphans stored by earlier batches or files. Reads:
-- read_orphans, spans. Writes: read_parents (appends). Run only when read_orphans is not empty.
INSERT INTO read_parents
SELECT trace_id, span_id,
       -- as local_forwards.sql parses them from a span of the batch
       TRY_CAST(v[1] AS VARCHAR[]), v[2]->>'$', v[3]->>'$'
FROM (
    SELECT s.trace_id, s.span_id,
           json_extract(s.attributes, ['$."forward.rids"', '$."forward.batch_id"', '$."forward.mode"']) AS v
    FROM spans AS s
    SEMI JOIN read_orphans AS o ON o.trace_id = s.trace_id AND o.parent_span_id = s.span_id
    WHERE s.name = 'forward'
);
