-- analysis: coverage
-- description: What evidence the store holds, so that every verdict says what the analyses could
--   and could not see (a store without page-level KV spans must never read as "no races").
-- returns: one row per kind of evidence: evidence (key), n (how many records of it), present,
--   n_missing (records that lack it where it was expected; resource_identity: resources whose
--   identity is the SDK's random per-process id, instance taken from service.name).
--   Keys: request_spans (request roots), page_kv_spans (kv.alloc / kv.free / kv.transfer),
--   transfer_timing (kv.transfer or mooncake_worker_send_session: when a write really ended),
--   layer_loads (hicache.load with per-layer offsets), layer_reads (forward.read), ordering_pairs
--   (causal pairs bounding cross-host clock offsets), spec_metrics (speculative acceptance per
--   request or step), output_text, feedback, resource_identity (resources with host.name or an
--   explicit service.instance.id).
-- requires: skew_bounds
WITH unconfigured AS (
    SELECT count(*) AS n
    FROM resources
    WHERE host_name IS NULL
      AND regexp_matches(coalesce(attributes->>'$."service.instance.id"', ''),
                         '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$')
),
counts AS (
    SELECT 'request_spans' AS evidence, (SELECT count(*) FROM requests) AS n, 0 AS n_missing
    UNION ALL
    SELECT 'page_kv_spans', (SELECT count(*) FROM kv_events WHERE op IN ('alloc', 'free', 'transfer')), 0
    UNION ALL
    SELECT 'transfer_timing',
           (SELECT count(*) FROM kv_events WHERE op = 'transfer')
           + (SELECT count(*) FROM request_stages WHERE name = 'mooncake_worker_send_session'), 0
    UNION ALL
    SELECT 'layer_loads', (SELECT count(*) FROM kv_events WHERE op = 'load' AND len(layer_offsets_ns) > 0), 0
    UNION ALL
    SELECT 'layer_reads', (SELECT count(*) FROM kv_events WHERE op = 'read' AND len(layer_offsets_ns) > 0), 0
    UNION ALL
    SELECT 'ordering_pairs', (SELECT coalesce(sum(n_lower_pairs + n_upper_pairs), 0) FROM skew_bounds), 0
    UNION ALL
    SELECT 'spec_metrics',
           (SELECT count(*) FROM requests WHERE spec_accept_length IS NOT NULL OR spec_verify_ct IS NOT NULL)
           + (SELECT count(*) FROM spec_steps), 0
    UNION ALL
    SELECT 'output_text', (SELECT count(*) FROM requests WHERE completion_text IS NOT NULL), 0
    UNION ALL
    SELECT 'feedback', (SELECT count(*) FROM feedback), 0
    UNION ALL
    SELECT 'resource_identity', (SELECT count(*) FROM resources) - (SELECT n FROM unconfigured),
           (SELECT n FROM unconfigured)
)
SELECT evidence, CAST(n AS BIGINT) AS n, n > 0 AS present, CAST(n_missing AS BIGINT) AS n_missing
FROM counts
