-- derive_spec_steps: the speculative verify steps of request roots -> rows of table spec_steps
-- (one per step of spec.accepted_per_step). Span-local (see derive_kv_events.sql for how these
-- files run). Reads: batch_roots (local_roots.sql). Gives: the rows to insert into spec_steps.
WITH a AS (
    SELECT *, json_extract(attributes, ['$."spec.accepted_per_step"', '$."spec.step_end_offsets_ns"']) AS v
    FROM batch_roots
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
FROM numbered
