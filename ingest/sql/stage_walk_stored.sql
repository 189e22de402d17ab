-- stage_walk_stored: the second walk's rows (stage_walk_more: stage_walk.sql over stage_walk_in
-- through stage_universe, both from stage_universe_stored.sql) replace those of the same slices
-- in stage_walk_out. Reads: stage_walk_more. Writes: stage_walk_out.
DELETE FROM stage_walk_out AS o
WHERE EXISTS (SELECT 1 FROM stage_walk_more AS w WHERE w.trace_id = o.trace_id AND w.span_id = o.span_id);

INSERT INTO stage_walk_out BY NAME
SELECT * FROM stage_walk_more;
