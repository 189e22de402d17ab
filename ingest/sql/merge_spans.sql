-- merge_spans: move one staged batch (stage_spans / stage_resources / stage_events / stage_links,
-- Arrow tables registered by ingest.pipeline; stage_spans.res_idx points into stage_resources,
-- the batch's distinct resources) into the raw tables, storing only spans not already stored.
-- Returns: nothing; leaves view `new_spans` (the spans this batch adds); ingest.pipeline then
-- runs merge_new_spans.sql when the batch has doubles (stored_doubles is not empty, or
-- batch_keys has fewer rows than the stage), and merge_store.sql.
-- stage_spans.file_id: ingested_files.file_id of each span's file, NULL for live batches.
-- Dedup: a span is (trace_id, span_id); doubles inside the batch keep the first occurrence,
-- doubles of stored spans are found through span_keys (below; no per-row index maintenance).
CREATE OR REPLACE TEMP TABLE batch_keys AS
SELECT seq, trace_id, span_id, hash(trace_id, span_id) AS span_key
FROM stage_spans
QUALIFY row_number() OVER (PARTITION BY trace_id, span_id ORDER BY seq) = 1;

-- Doubles of stored spans: first by key (span_keys holds hash(trace_id, span_id) of every stored
-- span: 8 bytes a span to scan, the hash table is built on the batch), then the few key hits
-- are confirmed on the ids themselves, so a hash collision never drops a span. No hit, no scan
-- of spans (a hash join with an empty build side skips its probe side).
CREATE OR REPLACE TEMP TABLE stored_doubles AS
WITH key_hits AS (
    SELECT b.trace_id, b.span_id
    FROM batch_keys AS b
    SEMI JOIN (SELECT k.span_key FROM span_keys AS k SEMI JOIN batch_keys AS b USING (span_key)) AS h
        USING (span_key)
)
SELECT h.trace_id, h.span_id
FROM key_hits AS h
SEMI JOIN spans AS s ON s.trace_id = h.trace_id AND s.span_id = h.span_id;

-- new_spans, the spans this batch adds, is a view (merge_new_spans.sql picks its definition):
-- over the stage itself when the batch holds no double (the common case: no copy), else over a
-- copy of the new rows (the keys above carry no attribute text). Either way it carries the
-- resource_id (hash of the resource's attribute text), computed once per resource.
CREATE OR REPLACE TEMP TABLE batch_resources AS
SELECT res_idx, hash(resource_attributes) AS resource_id FROM stage_resources;

CREATE OR REPLACE TEMP VIEW new_spans AS
SELECT s.* EXCLUDE (res_idx), hash(s.trace_id, s.span_id) AS span_key, r.resource_id
FROM stage_spans AS s
JOIN batch_resources AS r USING (res_idx);
