-- normalise_reads: read targets -> kv_events rows with op 'read', one per rid of the parent
-- forward (forward.rids), with the forward's batch id and mode; pages are empty (a read touches
-- the pages its rid holds at that time). Targets without a stored parent wait in
-- ingest_pending (kind 'read') and are derived when the parent arrives.
-- Reads: read_targets, read_parents, read_pending_now. Writes: kv_events (inserts), ingest_pending
-- (resolved 'read' rows deleted, targets still without a parent added).
INSERT INTO kv_events BY NAME
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
FROM read_targets AS t
JOIN read_parents AS f ON f.trace_id = t.trace_id AND f.span_id = t.parent_span_id;

DELETE FROM ingest_pending AS p
WHERE p.kind = 'read'
  AND EXISTS (SELECT 1 FROM read_pending_now AS r WHERE r.trace_id = p.trace_id AND r.span_id = p.span_id)
  AND EXISTS (SELECT 1 FROM read_parents AS f, read_targets AS t
              WHERE t.trace_id = p.trace_id AND t.span_id = p.span_id
                AND f.trace_id = t.trace_id AND f.span_id = t.parent_span_id);

INSERT INTO ingest_pending
SELECT t.trace_id, t.span_id, t.parent_span_id, 'read'
FROM read_targets AS t
ANTI JOIN read_parents AS f ON f.trace_id = t.trace_id AND f.span_id = t.parent_span_id
ANTI JOIN read_pending_now AS r ON r.trace_id = t.trace_id AND r.span_id = t.span_id;
