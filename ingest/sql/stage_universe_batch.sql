-- stage_universe_batch: ancestors to walk first: this batch's new spans. Reads: new_spans.
-- Returns nothing; fills temp table stage_universe (trace_id, span_id, parent_span_id, rid, room).
CREATE OR REPLACE TEMP TABLE stage_universe AS
SELECT trace_id, span_id, parent_span_id, rid,
       -- the stage's attribute text is canonical JSON (keys written as orjson writes them), so a
       -- span without the literal key has no bootstrap_room: only the others are parsed
       CASE WHEN contains(attributes, '"bootstrap_room"') THEN attributes->>'$.bootstrap_room' END AS room
FROM new_spans;

CREATE OR REPLACE TEMP TABLE stage_walk_in AS
SELECT * FROM stage_targets WHERE NOT was_pending;
