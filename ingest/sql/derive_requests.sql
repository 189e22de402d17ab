-- derive_requests: request roots -> rows of table requests (one per root).
-- Span-local (see derive_kv_events.sql for how these files run). Reads: batch_roots
-- (local_roots.sql). Gives: the rows to insert into requests.
-- bootstrap_room: stock roots write str(hex(room)) ("0x1f..."), kvtrace's conventions 16
-- zero-padded hex digits; both are stored as the latter.
WITH a AS (
    -- one JSON parse per root for all paths (json_extract with a list of paths); v[i]->>'$' is
    -- then what attributes->>path gives
    SELECT *, json_extract(attributes, [
        '$.bootstrap_room', '$."gen_ai.usage.prompt_tokens"', '$."gen_ai.usage.completion_tokens"',
        '$."gen_ai.usage.cached_tokens"', '$."gen_ai.response.finish_reasons"',
        '$."gen_ai.latency.time_to_first_token"', '$."gen_ai.latency.e2e"', '$."spec.verify_ct"',
        '$."spec.num_proposed_drafts"', '$."spec.num_correct_drafts"', '$."spec.accept_rate"',
        '$."spec.accept_length"', '$."spec.draft_tokens"', '$."gen_ai.completion"']) AS v
    FROM batch_roots
)
SELECT
    trace_id, span_id, rid, role, instance_id, host_name, service_version,
    CASE WHEN v[1]->>'$' ILIKE '0x%' THEN lpad(lower(substr(v[1]->>'$', 3)), 16, '0') ELSE v[1]->>'$' END
        AS bootstrap_room,
    start_ns, end_ns,
    TRY_CAST(v[2]->>'$' AS BIGINT) AS prompt_tokens,
    TRY_CAST(v[3]->>'$' AS BIGINT) AS completion_tokens,
    TRY_CAST(v[4]->>'$' AS BIGINT) AS cached_tokens,
    -- an OTLP array (conventions), or stock SGLang's JSON-encoded string ('["abort"]')
    CASE WHEN json_type(v[5]) = 'ARRAY' THEN v[5]->>'$[0]'
         WHEN json_valid(v[5]->>'$') AND json_type(json(v[5]->>'$')) = 'ARRAY' THEN json(v[5]->>'$')->>'$[0]'
         ELSE v[5]->>'$' END AS finish_reason,
    TRY_CAST(v[6]->>'$' AS DOUBLE) AS ttft_s,
    TRY_CAST(v[7]->>'$' AS DOUBLE) AS e2e_s,
    TRY_CAST(v[8]->>'$' AS BIGINT) AS spec_verify_ct,
    TRY_CAST(v[9]->>'$' AS BIGINT) AS spec_num_proposed_drafts,
    TRY_CAST(v[10]->>'$' AS BIGINT) AS spec_num_correct_drafts,
    TRY_CAST(v[11]->>'$' AS DOUBLE) AS spec_accept_rate,
    TRY_CAST(v[12]->>'$' AS DOUBLE) AS spec_accept_length,
    TRY_CAST(v[13]->>'$' AS BIGINT) AS spec_draft_tokens,
    v[14]->>'$' AS completion_text
FROM a
