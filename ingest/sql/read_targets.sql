-- read_targets: the forward.read spans whose kv_events rows this batch derives: the batch's new
-- ones, plus stored ones waiting (ingest_pending kind 'read') for a parent forward that this
-- batch brought. Reads: new_spans, ingest_pending, spans. Returns nothing; fills temp
-- table read_targets. The stored-span lookup only runs on the few pending rows that match.
CREATE OR REPLACE TEMP TABLE read_targets AS
SELECT trace_id, span_id, parent_span_id, instance_id, host_name, service_version, status_code,
       start_ns, end_ns, attributes
FROM new_spans
WHERE name = 'forward.read';

CREATE OR REPLACE TEMP TABLE read_pending_now AS
SELECT p.trace_id, p.span_id
FROM ingest_pending AS p
SEMI JOIN new_spans AS n ON n.trace_id = p.trace_id AND n.span_id = p.parent_span_id
WHERE p.kind = 'read';
