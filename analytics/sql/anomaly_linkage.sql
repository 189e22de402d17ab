-- analysis: anomaly_linkage
-- description: Which anomalous requests are explained by which findings (the request is a finding's
--   victim), and the delay from the unsafe window to the first abnormal speculative step.
-- returns: one row per anomalous request: rid, anomaly, reasons, instance_id, service_version,
--   explained (bool), finding_ids, finding_kinds (sorted, distinct), window_start_ns (earliest
--   window among its findings), first_abnormal_ns, first_abnormal_tokens, delay_ns (first abnormal
--   step - window start; NULL when either is unknown).
-- requires: request_anomalies, findings
WITH victims AS (
    SELECT victim_rid AS rid, list(finding_id ORDER BY finding_id) AS finding_ids,
           list_sort(list_distinct(list(kind))) AS finding_kinds, min(window_start_ns) AS window_start_ns
    FROM findings WHERE victim_rid IS NOT NULL
    GROUP BY victim_rid
)
SELECT a.rid, a.anomaly, a.reasons, a.instance_id, a.service_version,
       v.rid IS NOT NULL AS explained,
       coalesce(v.finding_ids, []) AS finding_ids,
       coalesce(v.finding_kinds, []) AS finding_kinds,
       v.window_start_ns, a.first_abnormal_ns, a.first_abnormal_tokens,
       a.first_abnormal_ns - v.window_start_ns AS delay_ns
FROM request_anomalies a
LEFT JOIN victims v USING (rid)
WHERE a.anomaly IN ('garbled', 'repetition')
ORDER BY explained, a.service_version, a.rid
