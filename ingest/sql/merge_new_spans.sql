-- merge_new_spans: the batch holds doubles (of stored spans or within itself): new_spans becomes
-- a view over a copy of the batch's new rows only. Reads: stage_spans, batch_resources, batch_keys,
-- stored_doubles.
CREATE OR REPLACE TEMP TABLE new_span_rows AS
SELECT b.* EXCLUDE (res_idx), k.span_key, r.resource_id
FROM stage_spans AS b
JOIN (SELECT * FROM batch_keys ANTI JOIN stored_doubles AS d USING (trace_id, span_id)) AS k ON k.seq = b.seq
JOIN batch_resources AS r USING (res_idx);

CREATE OR REPLACE TEMP VIEW new_spans AS SELECT * FROM new_span_rows;
