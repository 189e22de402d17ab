-- analysis: read_before_load
-- description: Bug 2 (SGLang PR #22811): per instance, rank, pool and layer, a forward.read that
--   read a layer of a request's pages before the hicache.load of that layer (for that request)
--   had completed. Same host, same clock: no skew involved.
-- returns: one row per (load span, read span) with at least one early layer, in the findings
--   columns: pages = the load's pages; layers = the layers read early, sorted; culprit_rid = the
--   request whose load was in flight; victim_rid = the request whose step read early; window =
--   first early layer read .. last early layer's copy done. Extras: load_span_id, read_span_id,
--   max_early_ns (largest read-before-done gap), service_version.
WITH loads AS (
    SELECT span_id, rid, instance_id, tp_rank, kv_pool, page_ids, start_ns, end_ns, layer_offsets_ns, service_version
    FROM kv_events WHERE op = 'load' AND rid IS NOT NULL AND layer_offsets_ns IS NOT NULL
),
reads AS (
    SELECT span_id, parent_span_id, rid, instance_id, tp_rank, kv_pool, start_ns, end_ns, layer_offsets_ns
    FROM kv_events WHERE op = 'read' AND rid IS NOT NULL AND layer_offsets_ns IS NOT NULL
),
pairs AS (
    SELECT l.span_id AS load_span_id, r.span_id AS read_span_id, r.parent_span_id AS forward_span_id,
           l.rid AS load_rid, r.rid AS read_rid, l.instance_id, l.tp_rank, l.kv_pool, l.page_ids,
           l.service_version, l.start_ns AS load_start_ns, l.layer_offsets_ns AS load_offsets,
           r.start_ns AS read_start_ns, r.layer_offsets_ns AS read_offsets
    FROM loads l
    JOIN reads r
      ON r.rid = l.rid AND r.instance_id = l.instance_id AND r.tp_rank = l.tp_rank AND r.kv_pool = l.kv_pool
    WHERE intervals_overlap(r.start_ns, r.end_ns, l.start_ns, l.end_ns)
),
-- the early layers of a pair, computed on the pair's offset lists (macros.sql): no row per layer
early AS (
    SELECT load_span_id, read_span_id, forward_span_id, load_rid, read_rid, instance_id, tp_rank, kv_pool,
           page_ids, service_version, read_start_ns, read_offsets, load_start_ns, load_offsets,
           early_layers(read_start_ns, read_offsets, load_start_ns, load_offsets) AS layers
    FROM pairs
)
SELECT
    substr(md5(concat_ws('|', 'read_before_load', load_span_id, read_span_id)), 1, 16) AS finding_id,
    'read_before_load' AS kind,
    instance_id AS instance,
    tp_rank,
    kv_pool,
    page_ids AS pages,
    CAST(layers AS INTEGER[]) AS layers,
    load_rid AS culprit_rid,
    read_rid AS victim_rid,
    list_min(layer_times(layers, read_start_ns, read_offsets)) AS window_start_ns,
    list_max(layer_times(layers, load_start_ns, load_offsets)) AS window_end_ns,
    'certain' AS confidence,
    drop_nulls([load_span_id, read_span_id, forward_span_id]) AS evidence_span_ids,
    load_span_id,
    read_span_id,
    list_max(layer_gaps(layers, read_start_ns, read_offsets, load_start_ns, load_offsets)) AS max_early_ns,
    service_version
FROM early
WHERE len(layers) > 0
ORDER BY instance, tp_rank, kv_pool, window_start_ns, finding_id
