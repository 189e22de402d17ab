-- analysis: request_anomalies
-- description: One anomaly label per finished request (ok / garbled / repetition, or aborted: no
--   output to judge, never counted as an anomalous output) with its reasons:
--   text signals (replacement and rare-character ratio, word 3-gram repetition), speculative
--   signals (whole-request accept length and rate, the per-step windowed detector) and feedback.
-- returns: one row per decode-side (or unified) request: rid, instance_id, host_name,
--   service_version, prompt_tokens, completion_tokens, cached_tokens, ttft_s, e2e_s, start_ns,
--   replacement_ratio, rare_char_ratio, repetition_ratio, spec_accept_length, spec_accept_rate,
--   detector_fired, detector_kind, first_abnormal_step, first_abnormal_ns, first_abnormal_tokens,
--   feedback_label, anomaly, reasons (sorted; empty when ok or aborted), finish_reason.
-- param: min_text_chars INTEGER = 24  shorter completions give no text signal
-- param: replacement_threshold DOUBLE = 0.02  share of U+FFFD characters that marks garbled text
-- param: rare_char_threshold DOUBLE = 0.08  share of characters outside common scripts that marks garbled text
-- param: repetition_threshold DOUBLE = 0.35  share of repeated word 3-grams that marks repetition
-- param: min_tokens INTEGER = 128  the whole-request low accept length rule applies past this many tokens
-- param: low_accept_length DOUBLE = 1.4  whole-request accept length below this marks garbled
-- param: high_accept_rate DOUBLE = 0.96  whole-request accept rate above this marks repetition
-- requires: spec_step_detector
WITH roots AS (
    SELECT * FROM requests
    WHERE role IN ('decode', 'unified') OR (role IS NULL AND completion_tokens IS NOT NULL)
    QUALIFY row_number() OVER (PARTITION BY rid ORDER BY end_ns DESC NULLS LAST, span_id) = 1
),
text AS (
    SELECT rid, completion_text AS t, length(completion_text) AS n,
           string_split_regex(trim(completion_text), '\s+') AS words
    FROM roots WHERE completion_text IS NOT NULL
),
text_signals AS (
    SELECT rid,
           CASE WHEN n >= $min_text_chars
                THEN (n - length(replace(t, '�', ''))) / n END AS replacement_ratio,
           CASE WHEN n >= $min_text_chars
                THEN length(regexp_replace(t, '[\x09\x0A\x0D\x20-\x7E\x{A0}-\x{24F}\x{370}-\x{4FF}\x{2010}-\x{203A}\x{3000}-\x{30FF}\x{4E00}-\x{9FFF}\x{AC00}-\x{D7AF}\x{FF00}-\x{FFEF}�]', '', 'g')) / n
           END AS rare_char_ratio,
           CASE WHEN len(words) >= 8 THEN
               1 - len(list_distinct(list_transform(range(1, len(words) - 1),
                       lambda i: words[i] || ' ' || words[i + 1] || ' ' || words[i + 2])))
                   / (len(words) - 2)
           END AS repetition_ratio
    FROM text
),
feedback_last AS (
    SELECT rid, arg_max(label, time_ns) AS feedback_label
    FROM feedback WHERE rid IS NOT NULL
    GROUP BY rid
),
signals AS (
    SELECT r.rid, r.instance_id, r.host_name, r.service_version, r.prompt_tokens, r.completion_tokens,
           r.cached_tokens, r.ttft_s, r.e2e_s, r.start_ns,
           t.replacement_ratio, t.rare_char_ratio, t.repetition_ratio,
           r.spec_accept_length, r.spec_accept_rate,
           coalesce(d.fired, false) AS detector_fired, d.fire_kind AS detector_kind,
           d.fire_step AS first_abnormal_step, d.fire_ns AS first_abnormal_ns, d.fire_tokens AS first_abnormal_tokens,
           f.feedback_label, r.finish_reason
    FROM roots r
    LEFT JOIN text_signals t USING (rid)
    LEFT JOIN spec_step_detector d USING (rid)
    LEFT JOIN feedback_last f USING (rid)
),
reasons AS (
    SELECT *,
           list_filter([
               CASE WHEN replacement_ratio >= $replacement_threshold THEN 'text_replacement_chars' END,
               CASE WHEN rare_char_ratio >= $rare_char_threshold THEN 'text_rare_chars' END
           ], lambda x: x IS NOT NULL) AS text_garbled,
           list_filter([
               CASE WHEN repetition_ratio >= $repetition_threshold THEN 'text_repetition' END
           ], lambda x: x IS NOT NULL) AS text_repeated,
           list_filter([
               CASE WHEN spec_accept_length < $low_accept_length AND completion_tokens > $min_tokens
                    THEN 'spec_low_accept_length' END,
               CASE WHEN detector_kind = 'low_accept_length' THEN 'detector_low_accept_length' END
           ], lambda x: x IS NOT NULL) AS spec_garbled,
           list_filter([
               CASE WHEN spec_accept_rate > $high_accept_rate THEN 'spec_high_accept_rate' END,
               CASE WHEN detector_kind = 'high_accept_rate' THEN 'detector_high_accept_rate' END
           ], lambda x: x IS NOT NULL) AS spec_repeated,
           replacement_ratio IS NOT NULL OR repetition_ratio IS NOT NULL AS has_text
    FROM signals
),
-- The label: user feedback first; then the text when there is enough of it (speculative signals
-- only support it); without text, the whole-request speculative rule. The windowed detector alone
-- never labels a request: it is the online monitor being evaluated, and noisy on healthy requests.
labelled AS (
    SELECT *,
           CASE
               WHEN feedback_label IN ('garbled', 'repetition') THEN feedback_label
               WHEN lower(finish_reason) = 'abort' THEN 'aborted'
               WHEN has_text AND len(text_garbled) > 0 THEN 'garbled'
               WHEN has_text AND len(text_repeated) > 0 THEN 'repetition'
               WHEN NOT has_text AND list_contains(spec_garbled, 'spec_low_accept_length') THEN 'garbled'
               WHEN NOT has_text AND list_contains(spec_repeated, 'spec_high_accept_rate') THEN 'repetition'
               ELSE 'ok'
           END AS anomaly
    FROM reasons
)
SELECT * EXCLUDE (text_garbled, text_repeated, spec_garbled, spec_repeated, has_text, finish_reason),
       CASE WHEN anomaly IN ('ok', 'aborted') THEN [] ELSE list_sort(list_concat(
           CASE WHEN feedback_label IN ('garbled', 'repetition') THEN ['feedback_' || feedback_label] ELSE [] END,
           CASE WHEN anomaly = 'garbled' THEN list_concat(text_garbled, spec_garbled)
                ELSE list_concat(text_repeated, spec_repeated) END)) END AS reasons,
       finish_reason
FROM labelled
ORDER BY rid
