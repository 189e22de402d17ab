-- local_stage_universe: every span of the batch as a step of the stage walk (stage_walk.sql):
-- its parent, rid and bootstrap_room. Span-local (see derive_kv_events.sql for how these files
-- run). Reads: new_spans. Gives: batch_stage_universe (trace_id, span_id, parent_span_id, rid,
-- room).
SELECT trace_id, span_id, parent_span_id, rid,
       -- the attribute text is canonical JSON (keys written as orjson writes them), so a span
       -- without the literal key has no bootstrap_room: only the others are parsed
       CASE WHEN contains(attributes, '"bootstrap_room"') THEN attributes->>'$.bootstrap_room' END AS room
FROM new_spans
