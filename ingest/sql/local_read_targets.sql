-- local_read_targets: the batch's forward.read spans (each gets kv_events 'read' rows once its
-- parent forward is known: normalise_reads.sql). Span-local (see derive_kv_events.sql for how
-- these files run). Reads: new_spans. Gives: batch_read_targets (the columns of read_targets:
-- the span's ids, place and times, and the attributes a read row needs).
SELECT trace_id, span_id, parent_span_id, instance_id, host_name, service_version, status_code,
       start_ns, end_ns,
       TRY_CAST(v[1]->>'$' AS INTEGER) AS tp_rank, v[2]->>'$' AS kv_pool,
       TRY_CAST(v[3] AS BIGINT[]) AS layer_offsets_ns
FROM (
    -- one JSON parse per span for all paths; v[i]->>'$' is what attributes->>path gives. The
    -- attributes are parsed here, in the decode worker, not on the store's one thread;
    -- read_targets_pending.sql takes the same from a stored forward.read.
    SELECT *, json_extract(attributes, ['$.tp_rank', '$."kv.pool"', '$."forward.layer_read_offsets_ns"']) AS v
    FROM new_spans
    WHERE name = 'forward.read'
)
