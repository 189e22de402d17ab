-- read_targets_pending: add the stored forward.read spans listed in read_pending_now to
-- read_targets. Reads: read_pending_now, spans. Writes: read_targets (appends). Run only when
-- read_pending_now is not empty.
INSERT INTO read_targets
SELECT trace_id, span_id, parent_span_id, instance_id, host_name, service_version, status_code,
       start_ns, end_ns,
       -- as local_read_targets.sql parses them from a span of the batch
       TRY_CAST(v[1]->>'$' AS INTEGER), v[2]->>'$', TRY_CAST(v[3] AS BIGINT[])
FROM (
    SELECT s.*, json_extract(s.attributes, ['$.tp_rank', '$."kv.pool"', '$."forward.layer_read_offsets_ns"']) AS v
    FROM spans AS s
    SEMI JOIN read_pending_now AS p ON p.trace_id = s.trace_id AND p.span_id = s.span_id
);
