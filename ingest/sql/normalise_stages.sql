-- normalise_stages: stage_targets with their walked rid / bootstrap_room -> request_stages
-- (rows of re-derived pending slices are replaced); unresolved slices wait in ingest_pending
-- (kind 'stage'). Reads: stage_targets, stage_walk_out. Writes: request_stages (pending slices'
-- rows replaced, new rows inserted), ingest_pending ('stage' rows resolved or added); drops
-- stage_walk_out.
DELETE FROM request_stages AS r
WHERE EXISTS (SELECT 1 FROM stage_targets AS t
              WHERE t.was_pending AND t.trace_id = r.trace_id AND t.span_id = r.span_id);

INSERT INTO request_stages BY NAME
SELECT t.trace_id, t.span_id, t.name, o.rid,
       -- stock SGLang writes str(hex(room)), kvtrace's conventions 16 zero-padded hex digits
       CASE WHEN o.room ILIKE '0x%' THEN lpad(lower(substr(o.room, 3)), 16, '0') ELSE o.room END AS bootstrap_room,
       t.instance_id, t.host_name,
       t.start_ns, t.end_ns
FROM stage_targets AS t
JOIN stage_walk_out AS o ON o.trace_id = t.trace_id AND o.span_id = t.span_id;

DELETE FROM ingest_pending AS p
WHERE p.kind = 'stage'
  AND EXISTS (SELECT 1 FROM stage_walk_out AS o
              WHERE o.resolved AND o.trace_id = p.trace_id AND o.span_id = p.span_id);

INSERT INTO ingest_pending
SELECT o.trace_id, o.span_id, NULL, 'stage'
FROM stage_walk_out AS o
JOIN stage_targets AS t ON t.trace_id = o.trace_id AND t.span_id = o.span_id
WHERE NOT o.resolved AND NOT t.was_pending;

DROP TABLE stage_walk_out;
