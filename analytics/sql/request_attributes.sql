-- analysis: request_attributes
-- description: The attributes an anomaly can be attributed to, per decode-side request: context-
--   length bucket, concurrency on its decode instance when it started, instance, version, the
--   transfer backend that brought its KV, and the derived ones that can show either side of a
--   race: the prefill instance that computed its KV (a HiCache race happens there), whether a
--   HiCache load served part of its prefix, how long its KV transfer took and how many pages it
--   held; plus every resource attribute (decode and prefill side) and the request root's
--   low-cardinality attributes, in `attributes`.
-- returns: one row per request of request_anomalies: rid, instance_id, service_version, prompt_tokens,
--   context_bucket ('<16K', '16-32K', '32-64K', '64-128K', '>=128K'), concurrency (requests in flight
--   on the same instance at its start), concurrency_bucket ('1-8', '9-16', '17-32', '33-48', '49-64',
--   '65-96', '97-128', '129-256', '>256'), transfer_backend, anomaly, then prefill_instance ('none'
--   without a prefill root), had_hicache_load, transfer_ms (longest kv.transfer of the request),
--   transfer_bucket ('none', '<50 ms', '50-100 ms', '100-200 ms', '200-500 ms', '0.5-1 s', '1-5 s',
--   '>=5 s'), n_pages (most pages of one kv.alloc / kv.transfer of the request, one rank and pool),
--   pages_bucket ('none', '1-64', '65-256', '257-1024', '1025-2048', '2049-4096', '>4096'), attributes
--   (MAP: 'resource.<key>' of the decode root's resource, 'prefill.resource.<key>' of the prefill
--   root's, 'span.<key>' for scalar root-span attributes with at most 32 distinct values).
-- requires: request_anomalies
WITH edges AS (
    SELECT instance_id, start_ns AS t, 1 AS delta, rid FROM request_anomalies WHERE start_ns IS NOT NULL
    UNION ALL
    SELECT r.instance_id, r.start_ns + CAST(r.e2e_s * 1e9 AS BIGINT), -1, NULL
    FROM request_anomalies r WHERE r.start_ns IS NOT NULL AND r.e2e_s IS NOT NULL
),
running AS (
    SELECT rid, sum(delta) OVER (PARTITION BY instance_id ORDER BY t, delta ROWS UNBOUNDED PRECEDING) AS concurrency
    FROM edges
),
-- one pass over kv_events: the request's transfers, HiCache loads and page counts
kv AS (
    SELECT rid,
           arg_max(transfer_backend, end_ns) FILTER (WHERE op = 'transfer') AS transfer_backend,
           max(end_ns - start_ns) FILTER (WHERE op = 'transfer') / 1e6 AS transfer_ms,
           bool_or(op = 'load') AS had_hicache_load,
           max(n_pages) FILTER (WHERE op IN ('alloc', 'transfer')) AS n_pages
    FROM kv_events WHERE rid IS NOT NULL AND op IN ('transfer', 'load', 'alloc')
    GROUP BY rid
),
prefill_roots AS (
    SELECT rid, arg_max(instance_id, end_ns) AS prefill_instance, arg_max(resource_id, end_ns) AS resource_id
    FROM (SELECT q.rid, q.instance_id, q.end_ns, s.resource_id
          FROM requests q JOIN spans s ON s.trace_id = q.trace_id AND s.span_id = q.span_id
          WHERE q.role = 'prefill')
    GROUP BY rid
),
decode_roots AS (
    SELECT q.rid, s.resource_id, s.attributes
    FROM requests q JOIN spans s ON s.trace_id = q.trace_id AND s.span_id = q.span_id
    WHERE q.role IN ('decode', 'unified') OR (q.role IS NULL AND q.completion_tokens IS NOT NULL)
    QUALIFY row_number() OVER (PARTITION BY q.rid ORDER BY q.end_ns DESC NULLS LAST, q.span_id) = 1
),
resource_kv AS (
    SELECT resource_id, unnest(map_keys(m)) AS k, unnest(map_values(m)) AS v
    FROM (SELECT resource_id, CAST(attributes AS MAP(VARCHAR, VARCHAR)) AS m FROM resources)
),
-- root-span attributes: scalar values only (no arrays or objects), parsed once per root
span_kv AS (
    SELECT rid, k, json_extract_string(v, '$') AS v
    FROM (SELECT rid, unnest(map_keys(m)) AS k, unnest(map_values(m)) AS v
          FROM (SELECT rid, CAST(attributes AS MAP(VARCHAR, JSON)) AS m FROM decode_roots))
    WHERE json_type(v) NOT IN ('ARRAY', 'OBJECT', 'NULL')
),
span_keys AS (
    SELECT k FROM span_kv GROUP BY k HAVING count(DISTINCT v) <= 32
),
extra AS (
    SELECT rid, map(list(k ORDER BY k), list(v ORDER BY k)) AS attributes
    FROM (
        SELECT d.rid, 'resource.' || r.k AS k, r.v FROM decode_roots d JOIN resource_kv r USING (resource_id)
        UNION ALL
        SELECT p.rid, 'prefill.resource.' || r.k, r.v FROM prefill_roots p JOIN resource_kv r USING (resource_id)
        UNION ALL
        SELECT s.rid, 'span.' || s.k, s.v FROM span_kv s SEMI JOIN span_keys USING (k)
    )
    WHERE v IS NOT NULL
    GROUP BY rid
)
SELECT a.rid, a.instance_id, a.service_version, a.prompt_tokens,
       CASE
           WHEN a.prompt_tokens IS NULL THEN 'unknown'
           WHEN a.prompt_tokens < 16384 THEN '<16K'
           WHEN a.prompt_tokens < 32768 THEN '16-32K'
           WHEN a.prompt_tokens < 65536 THEN '32-64K'
           WHEN a.prompt_tokens < 131072 THEN '64-128K'
           ELSE '>=128K'
       END AS context_bucket,
       CAST(r.concurrency AS INTEGER) AS concurrency,
       CASE
           WHEN r.concurrency IS NULL THEN 'unknown'
           WHEN r.concurrency <= 8 THEN '1-8'
           WHEN r.concurrency <= 16 THEN '9-16'
           WHEN r.concurrency <= 32 THEN '17-32'
           WHEN r.concurrency <= 48 THEN '33-48'
           WHEN r.concurrency <= 64 THEN '49-64'
           WHEN r.concurrency <= 96 THEN '65-96'
           WHEN r.concurrency <= 128 THEN '97-128'
           WHEN r.concurrency <= 256 THEN '129-256'
           ELSE '>256'
       END AS concurrency_bucket,
       coalesce(k.transfer_backend, 'none') AS transfer_backend,
       a.anomaly,
       coalesce(p.prefill_instance, 'none') AS prefill_instance,
       coalesce(k.had_hicache_load, false) AS had_hicache_load,
       k.transfer_ms,
       CASE
           WHEN k.transfer_ms IS NULL THEN 'none'
           WHEN k.transfer_ms < 50 THEN '<50 ms'
           WHEN k.transfer_ms < 100 THEN '50-100 ms'
           WHEN k.transfer_ms < 200 THEN '100-200 ms'
           WHEN k.transfer_ms < 500 THEN '200-500 ms'
           WHEN k.transfer_ms < 1000 THEN '0.5-1 s'
           WHEN k.transfer_ms < 5000 THEN '1-5 s'
           ELSE '>=5 s'
       END AS transfer_bucket,
       CAST(k.n_pages AS BIGINT) AS n_pages,
       CASE
           WHEN k.n_pages IS NULL OR k.n_pages = 0 THEN 'none'
           WHEN k.n_pages <= 64 THEN '1-64'
           WHEN k.n_pages <= 256 THEN '65-256'
           WHEN k.n_pages <= 1024 THEN '257-1024'
           WHEN k.n_pages <= 2048 THEN '1025-2048'
           WHEN k.n_pages <= 4096 THEN '2049-4096'
           ELSE '>4096'
       END AS pages_bucket,
       coalesce(e.attributes, CAST(map() AS MAP(VARCHAR, VARCHAR))) AS attributes
FROM request_anomalies a
LEFT JOIN running r USING (rid)
LEFT JOIN kv k USING (rid)
LEFT JOIN prefill_roots p USING (rid)
LEFT JOIN extra e USING (rid)
ORDER BY a.rid
