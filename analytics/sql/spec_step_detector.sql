-- analysis: spec_step_detector
-- description: The online speculative-acceptance monitor replayed per verify step: over a sliding
--   window of steps, fires when the accept length drops below a threshold once past a number of
--   output tokens (garbled), or the accept rate exceeds a threshold (repetition). Can fire
--   mid-generation, which is what lets the server abort and retry.
-- returns: one row per request with speculative steps: rid, instance_id, service_version, n_steps,
--   fired (bool), fire_kind (low_accept_length / high_accept_rate), fire_step, fire_ns (decode
--   clock), fire_tokens (output tokens when it fired).
-- param: window_steps INTEGER = 16  verify steps in the sliding window
-- param: min_tokens INTEGER = 128  the low-accept-length rule applies only past this many output tokens
-- param: low_accept_length DOUBLE = 1.4  fire when the window's accept length is below this
-- param: high_accept_rate DOUBLE = 0.96  fire when the window's accept rate is above this
WITH draft AS (
    SELECT rid, any_value(coalesce(spec_draft_tokens, 4)) AS draft_tokens
    FROM requests WHERE rid IS NOT NULL
    GROUP BY rid
),
steps AS (
    SELECT s.rid, s.instance_id, s.service_version, s.step, s.accepted, s.step_end_ns, d.draft_tokens,
           sum(s.accepted + 1) OVER w_all AS tokens_so_far,
           avg(s.accepted + 1) OVER w_win AS window_accept_length,
           sum(s.accepted) OVER w_win AS window_accepted,
           count(*) OVER w_win AS window_n
    FROM spec_steps s
    LEFT JOIN draft d USING (rid)
    WINDOW w_all AS (PARTITION BY s.rid ORDER BY s.step ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
           w_win AS (PARTITION BY s.rid ORDER BY s.step ROWS BETWEEN $window_steps - 1 PRECEDING AND CURRENT ROW)
),
checked AS (
    SELECT *,
           CASE
               WHEN window_n >= $window_steps AND tokens_so_far > $min_tokens
                    AND window_accept_length < $low_accept_length THEN 'low_accept_length'
               WHEN window_n >= $window_steps
                    AND window_accepted / (window_n * greatest(coalesce(draft_tokens, 4) - 1, 1)) > $high_accept_rate
                    THEN 'high_accept_rate'
           END AS fire_kind
    FROM steps
),
per_request AS (
    SELECT rid, any_value(instance_id) AS instance_id, any_value(service_version) AS service_version,
           count(*) AS n_steps,
           arg_min(fire_kind, step) FILTER (WHERE fire_kind IS NOT NULL) AS fire_kind,
           min(step) FILTER (WHERE fire_kind IS NOT NULL) AS fire_step,
           arg_min(step_end_ns, step) FILTER (WHERE fire_kind IS NOT NULL) AS fire_ns,
           arg_min(tokens_so_far, step) FILTER (WHERE fire_kind IS NOT NULL) AS fire_tokens
    FROM checked
    GROUP BY rid
)
SELECT rid, instance_id, service_version, n_steps, fire_kind IS NOT NULL AS fired, fire_kind,
       CAST(fire_step AS INTEGER) AS fire_step, fire_ns, CAST(fire_tokens AS BIGINT) AS fire_tokens
FROM per_request
ORDER BY rid
