-- local_read_targets: the batch's forward.read spans (each gets kv_events 'read' rows once its
-- parent forward is known: normalise_reads.sql). Span-local (see derive_kv_events.sql for how
-- these files run). Reads: new_spans. Gives: batch_read_targets (the columns of read_targets).
SELECT trace_id, span_id, parent_span_id, instance_id, host_name, service_version, status_code,
       start_ns, end_ns, attributes
FROM new_spans
WHERE name = 'forward.read'
