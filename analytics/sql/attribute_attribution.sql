-- analysis: attribute_attribution
-- description: BubbleUp-style attribution: for each attribute value (context bucket, concurrency
--   bucket, decode instance, prefill instance, version, transfer backend, HiCache load, transfer
--   duration, page count, and every resource and low-cardinality root-span attribute in
--   request_attributes.attributes), its share among anomalous requests versus among normal ones;
--   the values whose shares differ most are what sets the anomalies apart. Aborted requests (no
--   output to judge) are in neither group.
-- returns: one row per (attribute, value): attribute, value, anomalous, normal, share_anomalous,
--   share_normal, difference (share_anomalous - share_normal), ordered by |difference| descending.
-- requires: request_attributes
WITH labelled AS (
    SELECT *, anomaly IN ('garbled', 'repetition') AS anomalous
    FROM request_attributes WHERE anomaly IN ('garbled', 'repetition', 'ok')
),
long_form AS (
    SELECT rid, anomalous, attribute, value
    FROM (
        SELECT rid, anomalous, context_bucket, concurrency_bucket,
               coalesce(instance_id, 'unknown') AS instance, prefill_instance,
               coalesce(service_version, 'unknown') AS version, transfer_backend,
               CASE WHEN had_hicache_load THEN 'yes' ELSE 'no' END AS hicache_load,
               transfer_bucket AS transfer_duration, pages_bucket AS pages
        FROM labelled
    ) UNPIVOT (value FOR attribute IN (context_bucket, concurrency_bucket, instance, prefill_instance, version,
                                       transfer_backend, hicache_load, transfer_duration, pages))
    UNION ALL
    -- the resource and span attributes, less those the columns above already are
    SELECT rid, anomalous, attribute, value
    FROM (SELECT rid, anomalous, unnest(map_keys(attributes)) AS attribute, unnest(map_values(attributes)) AS value
          FROM labelled)
    WHERE attribute NOT IN ('resource.service.instance.id', 'resource.service.version',
                            'prefill.resource.service.instance.id', 'span.rid', 'span.bootstrap_room')
),
totals AS (
    SELECT count(*) FILTER (WHERE anomalous) AS n_anomalous, count(*) FILTER (WHERE NOT anomalous) AS n_normal
    FROM labelled
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
