-- derive_aborts: request.abort spans -> rows of table aborts. The time is the span's start (the
-- decision). Span-local (see derive_kv_events.sql for how these files run). Reads: new_spans.
-- Gives: the rows to insert into aborts.
SELECT
    trace_id, span_id, rid, instance_id, host_name, service_version,
    start_ns AS time_ns,
    attributes->>'$."abort.reason"' AS abort_reason,
    attributes->>'$."kv.poll_state"' AS poll_state
FROM new_spans
WHERE name = 'request.abort'
