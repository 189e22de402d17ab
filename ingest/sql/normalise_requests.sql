-- normalise_requests: request root spans of this batch -> requests, and their speculative
-- verify steps -> spec_steps. Reads: new_spans. Returns nothing.
-- A root is an SGLang "{role} Req {rid[:8]}" span with a `rid` attribute (or vLLM's
-- `llm_request` with gen_ai.request.id); it depends on no other span, so one pass suffices.
CREATE OR REPLACE TEMP TABLE new_roots AS
SELECT
    trace_id, span_id, coalesce(rid, attributes->>'$."gen_ai.request.id"') AS rid,
    coalesce(role, CASE WHEN name = 'llm_request' THEN 'unified' ELSE lower(split_part(name, ' ', 1)) END) AS role,
    instance_id, host_name, service_version, start_ns, end_ns, attributes
FROM new_spans
WHERE (regexp_matches(name, '^\w+ Req ') AND rid IS NOT NULL)
   OR (name = 'llm_request' AND attributes->>'$."gen_ai.request.id"' IS NOT NULL);

INSERT INTO requests BY NAME
SELECT
    trace_id, span_id, rid, role, instance_id, host_name, service_version,
    attributes->>'$.bootstrap_room' AS bootstrap_room,
    start_ns, end_ns,
    TRY_CAST(attributes->>'$."gen_ai.usage.prompt_tokens"' AS BIGINT) AS prompt_tokens,
    TRY_CAST(attributes->>'$."gen_ai.usage.completion_tokens"' AS BIGINT) AS completion_tokens,
    TRY_CAST(attributes->>'$."gen_ai.usage.cached_tokens"' AS BIGINT) AS cached_tokens,
    CASE json_type(attributes, '$."gen_ai.response.finish_reasons"')
        WHEN 'ARRAY' THEN attributes->>'$."gen_ai.response.finish_reasons"[0]'
        ELSE attributes->>'$."gen_ai.response.finish_reasons"'
    END AS finish_reason,
    TRY_CAST(attributes->>'$."gen_ai.latency.time_to_first_token"' AS DOUBLE) AS ttft_s,
    TRY_CAST(attributes->>'$."gen_ai.latency.e2e"' AS DOUBLE) AS e2e_s,
    TRY_CAST(attributes->>'$."spec.verify_ct"' AS BIGINT) AS spec_verify_ct,
    TRY_CAST(attributes->>'$."spec.num_proposed_drafts"' AS BIGINT) AS spec_num_proposed_drafts,
    TRY_CAST(attributes->>'$."spec.num_correct_drafts"' AS BIGINT) AS spec_num_correct_drafts,
    TRY_CAST(attributes->>'$."spec.accept_rate"' AS DOUBLE) AS spec_accept_rate,
    TRY_CAST(attributes->>'$."spec.accept_length"' AS DOUBLE) AS spec_accept_length,
    TRY_CAST(attributes->>'$."spec.draft_tokens"' AS BIGINT) AS spec_draft_tokens,
    attributes->>'$."gen_ai.completion"' AS completion_text
FROM new_roots;

INSERT INTO spec_steps BY NAME
WITH steps AS (
    SELECT
        trace_id, span_id, rid, instance_id, service_version, start_ns,
        TRY_CAST(attributes->'$."spec.accepted_per_step"' AS INTEGER[]) AS accepted,
        TRY_CAST(attributes->'$."spec.step_end_offsets_ns"' AS BIGINT[]) AS offsets
    FROM new_roots
    WHERE json_type(attributes, '$."spec.accepted_per_step"') = 'ARRAY'
)
SELECT
    trace_id, span_id, rid, instance_id, service_version,
    (i - 1)::INTEGER AS step,
    accepted[i] AS accepted,
    start_ns + offsets[i] AS step_end_ns
FROM steps, range(1, len(accepted) + 1) AS r(i);
