-- merge_spans: move one staged batch (stage_spans / stage_events / stage_links, Arrow tables
-- registered by ingest.pipeline) into the raw tables, storing only spans not already stored.
-- Returns: nothing; leaves temp table `new_spans` (the spans this batch added) for the
-- normalise_* files. Parameters: variable file_id (ingested_files.file_id, NULL for live batches).
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

-- The batch's rows are copied once, here (the keys above carry no attribute text), without the
-- resource's attribute text, which every span of a resource repeats: resources are stored from
-- the stage, once each.
CREATE OR REPLACE TEMP TABLE new_spans AS
SELECT b.* EXCLUDE (resource_attributes), k.span_key, hash(b.resource_attributes) AS resource_id
FROM stage_spans AS b
JOIN (SELECT * FROM batch_keys ANTI JOIN stored_doubles AS d USING (trace_id, span_id)) AS k ON k.seq = b.seq;

INSERT INTO span_keys SELECT span_key FROM new_spans;

INSERT OR IGNORE INTO resources
SELECT DISTINCT ON (resource_id)
    resource_id, service_name, instance_id, host_name, service_version, role,
    resource_attributes::JSON
FROM (SELECT hash(resource_attributes) AS resource_id, * FROM stage_spans)
WHERE resource_id IN (SELECT resource_id FROM new_spans);

INSERT INTO spans BY NAME
SELECT
    trace_id, span_id, parent_span_id, name, kind, resource_id, service_name, instance_id,
    host_name, service_version, scope_name, scope_version, start_ns, end_ns, status_code,
    status_message, rid, attributes::JSON AS attributes, getvariable('file_id') AS file_id
FROM new_spans;

INSERT INTO span_events BY NAME
SELECT e.trace_id, e.span_id, e.seq, e.name, e.time_ns, e.attributes::JSON AS attributes
FROM stage_events AS e
SEMI JOIN new_spans AS n ON n.seq = e.span_seq;

INSERT INTO span_links BY NAME
SELECT l.trace_id, l.span_id, l.seq, l.linked_trace_id, l.linked_span_id, l.attributes::JSON AS attributes
FROM stage_links AS l
SEMI JOIN new_spans AS n ON n.seq = l.span_seq;
