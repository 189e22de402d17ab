-- derive_feedback: feedback spans -> rows of table feedback. The time is the span's start (the
-- report). Span-local (see derive_kv_events.sql for how these files run). Reads: new_spans.
-- Gives: the rows to insert into feedback.
SELECT trace_id, span_id, rid, attributes->>'$."feedback.label"' AS label, start_ns AS time_ns
FROM new_spans
WHERE name = 'feedback'
