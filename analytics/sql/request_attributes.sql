-- analysis: request_attributes
-- description: The attributes an anomaly can be attributed to, per decode-side request: context-
--   length bucket, concurrency on its decode instance when it started, instance, version and the
--   transfer backend that brought its KV.
-- returns: one row per request of request_anomalies: rid, instance_id, service_version, prompt_tokens,
--   context_bucket ('<16K', '16-32K', '32-64K', '64-128K', '>=128K'), concurrency (requests in flight
--   on the same instance at its start), concurrency_bucket, transfer_backend, anomaly.
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
backends AS (
    SELECT rid, arg_max(transfer_backend, end_ns) AS transfer_backend
    FROM kv_events WHERE op = 'transfer' AND rid IS NOT NULL
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
           WHEN r.concurrency <= 32 THEN '9-32'
           WHEN r.concurrency <= 64 THEN '33-64'
           ELSE '>64'
       END AS concurrency_bucket,
       coalesce(b.transfer_backend, 'none') AS transfer_backend,
       a.anomaly
FROM request_anomalies a
LEFT JOIN running r USING (rid)
LEFT JOIN backends b USING (rid)
ORDER BY a.rid
