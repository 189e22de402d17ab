-- analysis: attribute_attribution
-- description: BubbleUp-style attribution: for each attribute value (context bucket, concurrency
--   bucket, instance, version, transfer backend), its share among anomalous requests versus among
--   normal ones; the values whose shares differ most are what sets the anomalies apart.
-- returns: one row per (attribute, value): attribute, value, anomalous, normal, share_anomalous,
--   share_normal, difference (share_anomalous - share_normal), ordered by |difference| descending.
-- requires: request_attributes
WITH long_form AS (
    UNPIVOT (
        SELECT rid, anomaly IN ('garbled', 'repetition') AS anomalous, context_bucket, concurrency_bucket,
               coalesce(instance_id, 'unknown') AS instance, coalesce(service_version, 'unknown') AS version,
               transfer_backend
        FROM request_attributes
    )
    ON context_bucket, concurrency_bucket, instance, version, transfer_backend
    INTO NAME attribute VALUE value
),
totals AS (
    SELECT count(*) FILTER (WHERE anomaly IN ('garbled', 'repetition')) AS n_anomalous, count(*) FILTER (WHERE anomaly = 'ok') AS n_normal
    FROM request_attributes
),
counts AS (
    SELECT attribute, value, count(*) FILTER (WHERE anomalous) AS anomalous,
           count(*) FILTER (WHERE NOT anomalous) AS normal
    FROM long_form GROUP BY ALL
)
SELECT c.attribute, c.value, c.anomalous, c.normal,
       coalesce(c.anomalous / nullif(t.n_anomalous, 0), 0) AS share_anomalous,
       coalesce(c.normal / nullif(t.n_normal, 0), 0) AS share_normal,
       coalesce(c.anomalous / nullif(t.n_anomalous, 0), 0) - coalesce(c.normal / nullif(t.n_normal, 0), 0) AS difference
FROM counts c CROSS JOIN totals t
ORDER BY abs(difference) DESC, attribute, value
