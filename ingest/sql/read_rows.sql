-- read_rows: the kv_events rows with op 'read' of the forward.read spans in reads_of whose parent
-- forward is in reads_from: one per rid of the parent (forward.rids), with the forward's batch id
-- and mode; pages are empty (a read touches the pages its rid holds at that time).
-- Reads: views reads_of (read targets: the columns of local_read_targets.sql) and reads_from
-- (forwards: the columns of local_forwards.sql), which merge.read_rows points at the tables it
-- joins: a batch's own targets and forwards (derive_rows, span-local), or the targets the store
-- resolves and their parents (normalise_reads.sql). Gives: kv_events rows (by name).
-- (the attributes were parsed span by span: local_read_targets.sql, local_forwards.sql)
SELECT
    t.trace_id, t.span_id, t.parent_span_id, 'read' AS op,
    unnest(f.rids) AS rid,
    t.instance_id,
    t.tp_rank,
    t.kv_pool,
    []::INTEGER[] AS page_ids, NULL AS page_lo, NULL AS page_hi, NULL AS n_pages,
    t.start_ns, t.end_ns, t.host_name AS clock_host, t.instance_id AS emit_instance_id,
    t.service_version, t.status_code,
    t.layer_offsets_ns,
    f.forward_batch_id,
    f.forward_mode
FROM reads_of AS t
JOIN reads_from AS f ON f.trace_id = t.trace_id AND f.span_id = t.parent_span_id
