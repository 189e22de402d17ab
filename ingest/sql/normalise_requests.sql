-- normalise_requests: request root spans of this batch -> requests, and their speculative
-- verify steps -> spec_steps. Reads: new_spans. Returns nothing.
-- Each row follows from its own span alone. For file ingest this runs in ingest.pipeline.Deriver
-- (a private in-memory DuckDB in the decode worker, each INSERT's query read out as Arrow) with
-- new_spans = one batch's spans, first copies; the store then inserts the rows of the spans it
-- adds. For live payloads it runs as written on the store's connection. Keep every statement
-- an `INSERT INTO table BY NAME query` or a temp table, and no "--" or ";" in literals.
-- A root is an SGLang "{role} Req {rid[:8]}" span with a `rid` attribute (or vLLM's
-- `llm_request` with gen_ai.request.id); it depends on no other span, so one pass suffices.
-- Stock SGLang (conventions v2, "Stock SGLang spans"): a unified server's role is empty, so its
-- root name starts with a space; mooncake's per-transfer `Sender Req 0x<room>` root is a
-- transfer, never a request (request_stages keeps its slices). Role: the resource's sglang.role
-- when set, else the root name's. bootstrap_room: stock roots write str(hex(room)) ("0x1f..."),
-- kvtrace's conventions 16 zero-padded hex digits; both are stored as the latter.
CREATE OR REPLACE TEMP TABLE new_roots AS
SELECT
    trace_id, span_id, coalesce(rid, attributes->>'$."gen_ai.request.id"') AS rid,
    coalesce(role, CASE WHEN name = 'llm_request' THEN 'unified'
                        WHEN starts_with(name, ' Req ') THEN 'unified'
                        ELSE lower(split_part(name, ' ', 1)) END) AS role,
    instance_id, host_name, service_version, start_ns, end_ns, attributes
FROM new_spans
WHERE (regexp_matches(name, '^\w* Req ') AND NOT starts_with(name, 'Sender Req ') AND rid IS NOT NULL)
   OR (name = 'llm_request' AND attributes->>'$."gen_ai.request.id"' IS NOT NULL);

INSERT INTO requests BY NAME
WITH a AS (
    -- one JSON parse per root for all paths (json_extract with a list of paths); v[i]->>'$' is
    -- then what attributes->>path gives
    SELECT *, json_extract(attributes, [
        '$.bootstrap_room', '$."gen_ai.usage.prompt_tokens"', '$."gen_ai.usage.completion_tokens"',
        '$."gen_ai.usage.cached_tokens"', '$."gen_ai.response.finish_reasons"',
        '$."gen_ai.latency.time_to_first_token"', '$."gen_ai.latency.e2e"', '$."spec.verify_ct"',
        '$."spec.num_proposed_drafts"', '$."spec.num_correct_drafts"', '$."spec.accept_rate"',
        '$."spec.accept_length"', '$."spec.draft_tokens"', '$."gen_ai.completion"']) AS v
    FROM new_roots
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
FROM a;

INSERT INTO spec_steps BY NAME
WITH a AS (
    SELECT *, json_extract(attributes, ['$."spec.accepted_per_step"', '$."spec.step_end_offsets_ns"']) AS v
    FROM new_roots
),
steps AS (
    SELECT
        trace_id, span_id, rid, instance_id, service_version, start_ns,
        TRY_CAST(v[1] AS INTEGER[]) AS accepted,
        TRY_CAST(v[2] AS BIGINT[]) AS offsets
    FROM a
    WHERE json_type(v[1]) = 'ARRAY'
),
numbered AS (
    SELECT *, unnest(range(1, len(accepted) + 1)) AS i FROM steps
)
SELECT
    trace_id, span_id, rid, instance_id, service_version,
    (i - 1)::INTEGER AS step,
    accepted[i] AS accepted,
    start_ns + offsets[i] AS step_end_ns
FROM numbered;
