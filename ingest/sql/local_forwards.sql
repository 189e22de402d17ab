-- local_forwards: the batch's forward spans, the parents a forward.read may need (this batch's
-- or a stored one waiting in ingest_pending). Span-local (see derive_kv_events.sql for how these
-- files run). Reads: new_spans. Gives: batch_forwards (trace_id, span_id, attributes).
SELECT trace_id, span_id, attributes
FROM new_spans
WHERE name = 'forward'
