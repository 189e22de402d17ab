-- stage_targets_pending: add the stored stage slices listed in stage_pending_now to
-- stage_targets. Reads: stage_pending_now, spans. Writes: stage_targets (appends, was_pending
-- true). Run only when stage_pending_now is not empty.
INSERT INTO stage_targets
SELECT s.trace_id, s.span_id, s.parent_span_id, s.name, s.instance_id, s.host_name, s.start_ns,
       s.end_ns, s.rid, s.attributes->>'$.bootstrap_room', true
FROM spans AS s
SEMI JOIN stage_pending_now AS p ON p.trace_id = s.trace_id AND p.span_id = s.span_id;
