-- normalise_kv_events: kv.alloc / kv.free / kv.transfer / hicache.load spans of this batch ->
-- kv_events (one row each). Reads: new_spans. Returns nothing. forward.read rows come from
-- normalise_reads.sql (they need the parent forward).
-- The page resource is (instance_id, tp_rank, kv_pool, page): for a transfer the destination
-- (kv.transfer.dst_instance / dst_rank); times stay on the emitter's clock (clock_host).
-- Each row follows from its own span alone. For file ingest this runs in ingest.pipeline.Deriver
-- (a private in-memory DuckDB in the decode worker, each INSERT's query read out as Arrow) with
-- new_spans = one batch's spans, first copies; the store then inserts the rows of the spans it
-- adds. For live payloads it runs as written on the store's connection. Keep every statement
-- an `INSERT INTO table BY NAME query` or a temp table, and no "--" or ";" in literals.
INSERT INTO kv_events BY NAME
WITH parsed AS (
    -- one JSON parse per span for all paths (json_extract with a list of paths); v[i]->>'$' is
    -- then what attributes->>path gives
    SELECT
        *,
        CASE name
            WHEN 'kv.alloc' THEN 'alloc'
            WHEN 'kv.free' THEN 'free'
            WHEN 'kv.transfer' THEN 'transfer'
            WHEN 'hicache.load' THEN 'load'
        END AS op,
        json_extract(attributes, [
            '$."kv.page_ids"', '$."kv.transfer.dst_instance"', '$."kv.transfer.dst_rank"', '$.tp_rank',
            '$."kv.pool"', '$."kv.page_size"', '$."kv.free.mode"', '$."kv.free.reason"', '$.bootstrap_room',
            '$."kv.transfer.bytes"', '$."kv.transfer.backend"', '$."hicache.layer_done_offsets_ns"',
            '$."hicache.num_tokens"']) AS v
    FROM new_spans
    WHERE name IN ('kv.alloc', 'kv.free', 'kv.transfer', 'hicache.load')
),
ops AS (
    SELECT *, list_sort(TRY_CAST(v[1] AS INTEGER[])) AS pages
    FROM parsed
)
SELECT
    trace_id, span_id, parent_span_id, op, rid,
    CASE WHEN op = 'transfer' THEN v[2]->>'$' ELSE instance_id END AS instance_id,
    TRY_CAST(CASE WHEN op = 'transfer' THEN v[3]->>'$' ELSE v[4]->>'$' END AS INTEGER) AS tp_rank,
    v[5]->>'$' AS kv_pool,
    coalesce(pages, []::INTEGER[]) AS page_ids,
    list_min(pages) AS page_lo,
    list_max(pages) AS page_hi,
    coalesce(len(pages), 0)::INTEGER AS n_pages,
    start_ns, end_ns,
    host_name AS clock_host,
    instance_id AS emit_instance_id,
    service_version, status_code,
    TRY_CAST(v[6]->>'$' AS INTEGER) AS page_size,
    v[7]->>'$' AS free_mode,
    v[8]->>'$' AS free_reason,
    -- as requests and request_stages store it: 16 zero-padded hex digits ("0x5f3a" too)
    CASE WHEN op <> 'transfer' THEN NULL
         WHEN v[9]->>'$' ILIKE '0x%' THEN lpad(lower(substr(v[9]->>'$', 3)), 16, '0')
         ELSE v[9]->>'$' END AS bootstrap_room,
    TRY_CAST(v[10]->>'$' AS BIGINT) AS transfer_bytes,
    v[11]->>'$' AS transfer_backend,
    CASE WHEN op = 'load' THEN TRY_CAST(v[12] AS BIGINT[]) END AS layer_offsets_ns,
    TRY_CAST(v[13]->>'$' AS BIGINT) AS hicache_num_tokens
FROM ops;
