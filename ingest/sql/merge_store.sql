-- merge_store: store one batch's new spans (view new_spans, see merge_spans.sql) in the raw
-- tables: span_keys, resources, spans, span_events, span_links. Reads: new_spans, stage_resources, stage_spans,
-- stage_events, stage_links. stage_spans.file_id: the ingested_files row of each span's file (NULL
-- for live batches). Returns nothing.
INSERT INTO span_keys SELECT span_key FROM new_spans;

-- Resources: each distinct one of the stage once (its fields follow from its attribute text);
-- those already stored are ignored.
INSERT OR IGNORE INTO resources
SELECT hash(resource_attributes) AS resource_id, service_name, instance_id, host_name, service_version, role,
       resource_attributes::JSON
FROM (SELECT DISTINCT resource_attributes, service_name, instance_id, host_name, service_version, role
      FROM stage_resources);

INSERT INTO spans BY NAME
SELECT
    trace_id, span_id, parent_span_id, name, kind, resource_id, service_name, instance_id,
    host_name, service_version, scope_name, scope_version, start_ns, end_ns, status_code,
    status_message, rid, attributes, file_id, trace_state, flags,
    dropped_attributes_count, dropped_events_count, dropped_links_count,
    scope_attributes, scope_dropped_attributes_count, scope_schema_url,
    resource_dropped_attributes_count, resource_schema_url
FROM new_spans;

INSERT INTO span_events BY NAME
SELECT e.trace_id, e.span_id, e.seq, e.name, e.time_ns, e.attributes,
       e.dropped_attributes_count
FROM stage_events AS e
SEMI JOIN new_spans AS n ON n.seq = e.span_seq;

INSERT INTO span_links BY NAME
SELECT l.trace_id, l.span_id, l.seq, l.linked_trace_id, l.linked_span_id, l.attributes,
       l.trace_state, l.flags, l.dropped_attributes_count
FROM stage_links AS l
SEMI JOIN new_spans AS n ON n.seq = l.span_seq;
