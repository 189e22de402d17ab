-- analysis: anomaly_leads
-- description: Anomalous requests that no finding explains: the leads to investigate next, strongest
--   evidence first (user feedback, then the step detector, then text signals).
-- returns: one row per unexplained anomaly: rid, anomaly, reasons, instance_id, service_version,
--   prompt_tokens, completion_tokens, first_abnormal_tokens, evidence_strength (number of reasons),
--   has_feedback.
-- requires: anomaly_linkage, request_anomalies
SELECT l.rid, l.anomaly, l.reasons, l.instance_id, l.service_version, a.prompt_tokens, a.completion_tokens,
       l.first_abnormal_tokens, len(l.reasons) AS evidence_strength,
       list_has_any(l.reasons, ['feedback_garbled', 'feedback_repetition']) AS has_feedback
FROM anomaly_linkage l
JOIN request_anomalies a USING (rid)
WHERE NOT l.explained
ORDER BY has_feedback DESC, evidence_strength DESC, l.rid
