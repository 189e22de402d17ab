-- local_roots: the batch's request root spans, for derive_requests.sql and derive_spec_steps.sql.
-- Span-local (see derive_kv_events.sql for how these files run). Reads: new_spans.
-- Gives: one row per root (trace_id, span_id, rid, role, instance_id, host_name, service_version,
-- start_ns, end_ns, attributes), registered as batch_roots.
-- A root is an SGLang "{role} Req {rid[:8]}" span with a `rid` attribute (or vLLM's
-- `llm_request` with gen_ai.request.id); it depends on no other span, so one pass suffices.
-- Stock SGLang (conventions v2, "Stock SGLang spans"): a unified server's role is empty, so its
-- root name starts with a space; mooncake's per-transfer `Sender Req 0x<room>` root is a
-- transfer, never a request (request_stages keeps its slices). Role: the resource's sglang.role
-- when set, else the root name's.
SELECT
    trace_id, span_id, coalesce(rid, attributes->>'$."gen_ai.request.id"') AS rid,
    coalesce(role, CASE WHEN name = 'llm_request' THEN 'unified'
                        WHEN starts_with(name, ' Req ') THEN 'unified'
                        ELSE lower(split_part(name, ' ', 1)) END) AS role,
    instance_id, host_name, service_version, start_ns, end_ns, attributes
FROM new_spans
WHERE (regexp_matches(name, '^\w* Req ') AND NOT starts_with(name, 'Sender Req ') AND rid IS NOT NULL)
   OR (name = 'llm_request' AND attributes->>'$."gen_ai.request.id"' IS NOT NULL)
