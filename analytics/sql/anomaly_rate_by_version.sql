-- analysis: anomaly_rate_by_version
-- description: Anomaly rate per 10,000 requests by service.version, with how many anomalies findings
--   explain and how many findings of each kind the version has.
-- returns: one row per version (in order of first request): service_version, requests, anomalies,
--   garbled, repetition, per_10k, explained, unexplained, findings, abort_before_write_complete,
--   unsafe_free, read_before_load, page_hazard, first_start_ns, last_start_ns.
-- requires: request_anomalies, anomaly_linkage, findings
WITH per_version AS (
    SELECT coalesce(service_version, 'unknown') AS service_version, count(*) AS requests,
           count(*) FILTER (WHERE anomaly IN ('garbled', 'repetition')) AS anomalies,
           count(*) FILTER (WHERE anomaly = 'garbled') AS garbled,
           count(*) FILTER (WHERE anomaly = 'repetition') AS repetition,
           min(start_ns) AS first_start_ns, max(start_ns) AS last_start_ns
    FROM request_anomalies GROUP BY ALL
),
explained AS (
    SELECT coalesce(service_version, 'unknown') AS service_version, count(*) FILTER (WHERE explained) AS explained
    FROM anomaly_linkage GROUP BY ALL
),
finding_counts AS (
    SELECT coalesce(service_version, 'unknown') AS service_version, count(*) AS findings,
           count(*) FILTER (WHERE kind = 'abort_before_write_complete') AS abort_before_write_complete,
           count(*) FILTER (WHERE kind = 'unsafe_free') AS unsafe_free,
           count(*) FILTER (WHERE kind = 'read_before_load') AS read_before_load,
           count(*) FILTER (WHERE kind = 'page_hazard') AS page_hazard
    FROM findings GROUP BY ALL
)
SELECT p.service_version, p.requests, p.anomalies, p.garbled, p.repetition,
       round(p.anomalies * 10000.0 / p.requests, 2) AS per_10k,
       coalesce(e.explained, 0) AS explained, p.anomalies - coalesce(e.explained, 0) AS unexplained,
       coalesce(f.findings, 0) AS findings,
       coalesce(f.abort_before_write_complete, 0) AS abort_before_write_complete,
       coalesce(f.unsafe_free, 0) AS unsafe_free,
       coalesce(f.read_before_load, 0) AS read_before_load,
       coalesce(f.page_hazard, 0) AS page_hazard,
       p.first_start_ns, p.last_start_ns
FROM per_version p
LEFT JOIN explained e USING (service_version)
LEFT JOIN finding_counts f USING (service_version)
ORDER BY p.first_start_ns NULLS LAST, p.service_version
