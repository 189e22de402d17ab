-- merge_spans: move one staged batch (stage_spans / stage_events / stage_links, Arrow tables
-- registered by ingest.pipeline) into the raw tables, storing only spans not already stored.
-- Returns: nothing; leaves temp table `new_spans` (the spans this batch added) for the
-- normalise_* files. Parameters: variable file_id (ingested_files.file_id, NULL for live batches).
-- Dedup: a span is (trace_id, span_id); doubles inside the batch keep the first occurrence,
-- doubles of stored spans are dropped by an anti-join (no per-row index maintenance).
CREATE OR REPLACE TEMP TABLE new_spans AS
WITH first_in_batch AS (
    SELECT *
    FROM stage_spans
    QUALIFY row_number() OVER (PARTITION BY trace_id, span_id ORDER BY seq) = 1
)
SELECT b.*, hash(b.resource_attributes) AS resource_id
FROM first_in_batch AS b
ANTI JOIN spans AS s ON s.trace_id = b.trace_id AND s.span_id = b.span_id;

INSERT OR IGNORE INTO resources
SELECT DISTINCT ON (resource_id)
    resource_id, service_name, instance_id, host_name, service_version, role,
    resource_attributes::JSON
FROM new_spans;

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
