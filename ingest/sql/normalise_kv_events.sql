-- normalise_kv_events: kv.alloc / kv.free / kv.transfer / hicache.load spans of this batch ->
-- kv_events (one row each). Reads: new_spans. Returns nothing. forward.read rows come from
-- normalise_reads.sql (they need the parent forward).
-- The page resource is (instance_id, tp_rank, kv_pool, page): for a transfer the destination
-- (kv.transfer.dst_instance / dst_rank); times stay on the emitter's clock (clock_host).
INSERT INTO kv_events BY NAME
WITH ops AS (
    SELECT
        *,
        CASE name
            WHEN 'kv.alloc' THEN 'alloc'
            WHEN 'kv.free' THEN 'free'
            WHEN 'kv.transfer' THEN 'transfer'
            WHEN 'hicache.load' THEN 'load'
        END AS op,
        list_sort(TRY_CAST(attributes->'$."kv.page_ids"' AS INTEGER[])) AS pages
    FROM new_spans
    WHERE name IN ('kv.alloc', 'kv.free', 'kv.transfer', 'hicache.load')
)
SELECT
    trace_id, span_id, parent_span_id, op, rid,
    CASE WHEN op = 'transfer' THEN attributes->>'$."kv.transfer.dst_instance"' ELSE instance_id END AS instance_id,
    TRY_CAST(CASE WHEN op = 'transfer' THEN attributes->>'$."kv.transfer.dst_rank"' ELSE attributes->>'$.tp_rank' END AS INTEGER) AS tp_rank,
    attributes->>'$."kv.pool"' AS kv_pool,
    coalesce(pages, []::INTEGER[]) AS page_ids,
    list_min(pages) AS page_lo,
    list_max(pages) AS page_hi,
    coalesce(len(pages), 0)::INTEGER AS n_pages,
    start_ns, end_ns,
    host_name AS clock_host,
    instance_id AS emit_instance_id,
    service_version, status_code,
    TRY_CAST(attributes->>'$."kv.page_size"' AS INTEGER) AS page_size,
    attributes->>'$."kv.free.mode"' AS free_mode,
    attributes->>'$."kv.free.reason"' AS free_reason,
    CASE WHEN op = 'transfer' THEN attributes->>'$.bootstrap_room' END AS bootstrap_room,
    TRY_CAST(attributes->>'$."kv.transfer.bytes"' AS BIGINT) AS transfer_bytes,
    attributes->>'$."kv.transfer.backend"' AS transfer_backend,
    CASE WHEN op = 'load' THEN TRY_CAST(attributes->'$."hicache.layer_done_offsets_ns"' AS BIGINT[]) END AS layer_offsets_ns,
    TRY_CAST(attributes->>'$."hicache.num_tokens"' AS BIGINT) AS hicache_num_tokens
FROM ops;
