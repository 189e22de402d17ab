-- local_forwards: the batch's forward spans, the parents a forward.read may need (this batch's
-- or a stored one waiting in ingest_pending). Span-local (see derive_kv_events.sql for how these
-- files run). Reads: new_spans. Gives: batch_forwards (trace_id, span_id, and the attributes
-- a read needs: rids, forward_batch_id, forward_mode), parsed here, in the decode worker, not
-- on the store's one thread. read_parents_stored.sql takes the same from a stored forward.
SELECT trace_id, span_id,
       TRY_CAST(v[1] AS VARCHAR[]) AS rids, v[2]->>'$' AS forward_batch_id, v[3]->>'$' AS forward_mode
FROM (
    -- one JSON parse per span for all paths; v[i]->>'$' is what attributes->>path gives
    SELECT trace_id, span_id,
           json_extract(attributes, ['$."forward.rids"', '$."forward.batch_id"', '$."forward.mode"']) AS v
    FROM new_spans
    WHERE name = 'forward'
)
