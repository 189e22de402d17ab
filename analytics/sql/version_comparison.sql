-- analysis: version_comparison
-- description: Deployments side by side by context-length bucket: decode throughput, time to first
--   token and prefix-cache hit rate per service.version (how a LayerSplit-style change shows).
-- returns: one row per (service_version, context_bucket): requests, output_tokens_per_s (sum of
--   completion tokens / sum of decode time), ttft_p50_s, ttft_p90_s, cache_hit_rate (cached /
--   prompt tokens), anomalies_per_10k.
-- requires: request_attributes, request_anomalies
SELECT coalesce(a.service_version, 'unknown') AS service_version, b.context_bucket,
       count(*) AS requests,
       sum(a.completion_tokens) / nullif(sum(greatest(a.e2e_s - coalesce(a.ttft_s, 0), 0)), 0) AS output_tokens_per_s,
       quantile_cont(a.ttft_s, 0.5) AS ttft_p50_s,
       quantile_cont(a.ttft_s, 0.9) AS ttft_p90_s,
       sum(a.cached_tokens) / nullif(sum(a.prompt_tokens), 0) AS cache_hit_rate,
       round(count(*) FILTER (WHERE a.anomaly IN ('garbled', 'repetition')) * 10000.0 / count(*), 2) AS anomalies_per_10k
FROM request_anomalies a
JOIN request_attributes b USING (rid)
GROUP BY ALL
ORDER BY service_version, min(a.prompt_tokens)
