-- normalise_aborts_feedback: request.abort spans -> aborts, feedback spans -> feedback.
-- Reads: new_spans. Returns nothing. Times are span starts (the decision / the report).
-- Runs in ingest.pipeline.Deriver: a private in-memory DuckDB with the store's schema, where
-- new_spans is one batch's spans (each span's first copy); the store inserts the rows of the
-- spans it adds. Each row follows from its own span alone.
INSERT INTO aborts BY NAME
SELECT
    trace_id, span_id, rid, instance_id, host_name, service_version,
    start_ns AS time_ns,
    attributes->>'$."abort.reason"' AS abort_reason,
    attributes->>'$."kv.poll_state"' AS poll_state
FROM new_spans
WHERE name = 'request.abort';

INSERT INTO feedback BY NAME
SELECT trace_id, span_id, rid, attributes->>'$."feedback.label"' AS label, start_ns AS time_ns
FROM new_spans
WHERE name = 'feedback';
