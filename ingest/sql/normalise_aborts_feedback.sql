-- normalise_aborts_feedback: request.abort spans -> aborts, feedback spans -> feedback.
-- Reads: new_spans. Returns nothing. Times are span starts (the decision / the report).
-- Each row follows from its own span alone. For file ingest this runs in ingest.pipeline.Deriver
-- (a private in-memory DuckDB in the decode worker, each INSERT's query read out as Arrow) with
-- new_spans = one batch's spans, first copies; the store then inserts the rows of the spans it
-- adds. For live payloads it runs as written on the store's connection. Keep every statement
-- an `INSERT INTO table BY NAME query` or a temp table, and no "--" or ";" in literals.
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
