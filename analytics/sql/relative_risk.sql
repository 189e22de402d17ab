-- analysis: relative_risk
-- description: Relative risk of an anomalous output for requests that are a finding's victim versus
--   requests that are not, per finding kind and for any finding.
-- returns: one row per exposure (a finding kind, or 'any'): exposed, exposed_anomalous, unexposed,
--   unexposed_anomalous, risk_exposed, risk_unexposed, relative_risk (NULL when the unexposed risk
--   is 0).
-- requires: request_anomalies, findings
WITH exposures AS (
    SELECT DISTINCT kind AS exposure, victim_rid AS rid FROM findings WHERE victim_rid IS NOT NULL
    UNION
    SELECT 'any', victim_rid FROM findings WHERE victim_rid IS NOT NULL
),
kinds AS (
    SELECT DISTINCT exposure FROM exposures
    UNION SELECT 'any'
),
grid AS (
    SELECT k.exposure, a.rid, a.anomaly IN ('garbled', 'repetition') AS anomalous, e.rid IS NOT NULL AS exposed
    FROM kinds k CROSS JOIN request_anomalies a
    LEFT JOIN exposures e ON e.exposure = k.exposure AND e.rid = a.rid
),
counts AS (
    SELECT exposure,
           count(*) FILTER (WHERE exposed) AS exposed,
           count(*) FILTER (WHERE exposed AND anomalous) AS exposed_anomalous,
           count(*) FILTER (WHERE NOT exposed) AS unexposed,
           count(*) FILTER (WHERE NOT exposed AND anomalous) AS unexposed_anomalous
    FROM grid GROUP BY exposure
)
SELECT *,
       exposed_anomalous / nullif(exposed, 0) AS risk_exposed,
       unexposed_anomalous / nullif(unexposed, 0) AS risk_unexposed,
       (exposed_anomalous / nullif(exposed, 0)) / nullif(unexposed_anomalous / nullif(unexposed, 0), 0) AS relative_risk
FROM counts
ORDER BY exposure = 'any' DESC, exposure
