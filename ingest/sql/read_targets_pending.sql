-- read_targets_pending: add the stored forward.read spans listed in read_pending_now to
-- read_targets. Reads: read_pending_now, spans. Writes: read_targets (appends). Run only when
-- read_pending_now is not empty.
INSERT INTO read_targets
SELECT s.trace_id, s.span_id, s.parent_span_id, s.instance_id, s.host_name, s.service_version,
       s.status_code, s.start_ns, s.end_ns, s.attributes::VARCHAR
FROM spans AS s
SEMI JOIN read_pending_now AS p ON p.trace_id = s.trace_id AND p.span_id = s.span_id;
