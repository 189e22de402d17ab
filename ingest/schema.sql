-- kvtrace store schema, owned by ingest/. One DDL file; every statement is idempotent.
--
-- Two layers:
--   raw tables      what OTLP carried (resources, spans, span_events, span_links), nothing lost;
--   normalised      what the analyses read (requests, spec_steps, kv_events, aborts,
--                   request_stages, feedback), built once at ingest, in SQL, so that
--                   analyses never parse attributes.
-- Bookkeeping: ingested_files, quarantine.
--
-- Conventions (../shared/docs/conventions.md): times are Unix ns on the emitting host's clock.
-- Ids are lower-case hex strings: trace ids 32 chars (a 64-bit SGLang id is left-padded with
-- zeros, as its 16-byte protobuf form is), span ids 16 chars.
-- A span's identity is (trace_id, span_id): re-ingest never stores it twice.
-- This file is the contract between ingest/ and analytics/: columns may be added, never renamed.

CREATE TABLE IF NOT EXISTS resources (
    resource_id      UBIGINT PRIMARY KEY,     -- hash of the resource's sorted attributes
    service_name     VARCHAR,
    instance_id      VARCHAR,                 -- service.instance.id
    host_name        VARCHAR,                 -- host.name: one host = one clock domain
    service_version  VARCHAR,
    role             VARCHAR,                 -- sglang.role
    attributes       JSON                     -- every resource attribute, OTLP-typed values
);
-- Attribute JSON (resources, spans, span_events, span_links, spans.scope_attributes) keeps the
-- OTLP type of every value: strings, ints (JSON integers), doubles (a fraction or exponent),
-- bools, arrays, kvlists (objects), empty values as null. Values JSON cannot carry as such are
-- one-member objects named after their OTLP/JSON field: bytes {"bytesValue": "<base64>"}, NaN and
-- infinities {"doubleValue": "NaN" | "Infinity" | "-Infinity"}; a kvlist whose only key is
-- bytesValue, doubleValue or kvlistValue is wrapped as {"kvlistValue": {...}} (ingest/decode.py).

CREATE TABLE IF NOT EXISTS spans (
    trace_id         VARCHAR NOT NULL,
    span_id          VARCHAR NOT NULL,
    parent_span_id   VARCHAR,
    name             VARCHAR NOT NULL,
    kind             INTEGER,                 -- OTLP SpanKind number (any int32: enums are open)
    resource_id      UBIGINT,
    service_name     VARCHAR,
    instance_id      VARCHAR,
    host_name        VARCHAR,
    service_version  VARCHAR,
    scope_name       VARCHAR,
    scope_version    VARCHAR,
    start_ns         BIGINT,
    end_ns           BIGINT,
    status_code      INTEGER,                 -- 0 unset, 1 ok, 2 error (any int32)
    status_message   VARCHAR,
    rid              VARCHAR,                 -- the `rid` attribute, when present
    attributes       JSON USING COMPRESSION zstd, -- {"key": value}, OTLP types kept (arrays, kvlists);
                                              -- zstd: cheaper to write than the default here
    file_id          INTEGER,                 -- ingested_files.file_id that first stored it
    -- the rest of the OTLP span, scope and resource (NULL in rows stored before they were kept)
    trace_state      VARCHAR,                 -- W3C tracestate; NULL when empty
    flags            UINTEGER,                -- W3C trace flags and the OTLP is-remote bits
    dropped_attributes_count  UINTEGER,
    dropped_events_count      UINTEGER,
    dropped_links_count       UINTEGER,
    scope_attributes JSON,                    -- the instrumentation scope's attributes
    scope_dropped_attributes_count    UINTEGER,
    scope_schema_url VARCHAR,                 -- ScopeSpans.schema_url; NULL when empty
    resource_dropped_attributes_count UINTEGER,
    resource_schema_url VARCHAR               -- ResourceSpans.schema_url; NULL when empty
);
-- stores made before these columns existed (kind and status_code were TINYINT there: store.py
-- widens them)
ALTER TABLE spans ADD COLUMN IF NOT EXISTS trace_state VARCHAR;
ALTER TABLE spans ADD COLUMN IF NOT EXISTS flags UINTEGER;
ALTER TABLE spans ADD COLUMN IF NOT EXISTS dropped_attributes_count UINTEGER;
ALTER TABLE spans ADD COLUMN IF NOT EXISTS dropped_events_count UINTEGER;
ALTER TABLE spans ADD COLUMN IF NOT EXISTS dropped_links_count UINTEGER;
ALTER TABLE spans ADD COLUMN IF NOT EXISTS scope_attributes JSON;
ALTER TABLE spans ADD COLUMN IF NOT EXISTS scope_dropped_attributes_count UINTEGER;
ALTER TABLE spans ADD COLUMN IF NOT EXISTS scope_schema_url VARCHAR;
ALTER TABLE spans ADD COLUMN IF NOT EXISTS resource_dropped_attributes_count UINTEGER;
ALTER TABLE spans ADD COLUMN IF NOT EXISTS resource_schema_url VARCHAR;

CREATE TABLE IF NOT EXISTS span_events (
    trace_id   VARCHAR NOT NULL,
    span_id    VARCHAR NOT NULL,
    seq        INTEGER NOT NULL,              -- position of the event in the span
    name       VARCHAR,
    time_ns    BIGINT,
    attributes JSON USING COMPRESSION zstd,
    dropped_attributes_count UINTEGER
);
ALTER TABLE span_events ADD COLUMN IF NOT EXISTS dropped_attributes_count UINTEGER;

CREATE TABLE IF NOT EXISTS span_links (
    trace_id         VARCHAR NOT NULL,
    span_id          VARCHAR NOT NULL,
    seq              INTEGER NOT NULL,
    linked_trace_id  VARCHAR,                 -- NULL when the link carried no (valid) id
    linked_span_id   VARCHAR,
    attributes       JSON USING COMPRESSION zstd,
    trace_state      VARCHAR,
    flags            UINTEGER,
    dropped_attributes_count UINTEGER
);
ALTER TABLE span_links ADD COLUMN IF NOT EXISTS trace_state VARCHAR;
ALTER TABLE span_links ADD COLUMN IF NOT EXISTS flags UINTEGER;
ALTER TABLE span_links ADD COLUMN IF NOT EXISTS dropped_attributes_count UINTEGER;

-- One row per request root span ("{role} Req {rid[:8]}" with a `rid`), per role.
CREATE TABLE IF NOT EXISTS requests (
    trace_id                  VARCHAR NOT NULL,
    span_id                   VARCHAR NOT NULL,
    rid                       VARCHAR NOT NULL,
    role                      VARCHAR,        -- prefill / decode / unified (resource sglang.role)
    instance_id               VARCHAR,
    host_name                 VARCHAR,
    service_version           VARCHAR,
    bootstrap_room            VARCHAR,
    start_ns                  BIGINT,
    end_ns                    BIGINT,
    prompt_tokens             BIGINT,
    completion_tokens         BIGINT,
    cached_tokens             BIGINT,
    finish_reason             VARCHAR,        -- first of gen_ai.response.finish_reasons
    ttft_s                    DOUBLE,         -- gen_ai.latency.time_to_first_token
    e2e_s                     DOUBLE,         -- gen_ai.latency.e2e
    spec_verify_ct            BIGINT,
    spec_num_proposed_drafts  BIGINT,
    spec_num_correct_drafts   BIGINT,
    spec_accept_rate          DOUBLE,
    spec_accept_length        DOUBLE,
    spec_draft_tokens         BIGINT,
    completion_text           VARCHAR
);

-- One row per speculative verify step of a request (from spec.accepted_per_step and
-- spec.step_end_offsets_ns of its root span).
CREATE TABLE IF NOT EXISTS spec_steps (
    trace_id         VARCHAR NOT NULL,
    span_id          VARCHAR NOT NULL,
    rid              VARCHAR NOT NULL,
    instance_id      VARCHAR,
    service_version  VARCHAR,
    step             INTEGER NOT NULL,        -- 0-based
    accepted         INTEGER,                 -- accepted draft tokens at this step
    step_end_ns      BIGINT                   -- absolute: root start + offset
);

-- One row per KV lifecycle span: kv.alloc, kv.free, kv.transfer, hicache.load, forward.read.
-- The page resource is (instance_id, tp_rank, kv_pool, page): for a transfer these are the
-- *destination* (kv.transfer.dst_instance / dst_rank); times stay on clock_host's clock.
CREATE TABLE IF NOT EXISTS kv_events (
    trace_id          VARCHAR NOT NULL,
    span_id           VARCHAR NOT NULL,
    parent_span_id    VARCHAR,
    op                VARCHAR NOT NULL,       -- alloc / free / transfer / load / read
    rid               VARCHAR,                -- reads: one row per rid of the parent forward
    instance_id       VARCHAR,                -- instance that owns the pages
    tp_rank           INTEGER,
    kv_pool           VARCHAR,
    page_ids          INTEGER[],              -- sorted; empty for reads (pages = rid's holdings)
    page_lo           INTEGER,                -- min(page_ids): cheap range pre-filter for joins
    page_hi           INTEGER,                -- max(page_ids)
    n_pages           INTEGER,
    start_ns          BIGINT,
    end_ns            BIGINT,
    clock_host        VARCHAR,                -- host whose clock start_ns/end_ns are on
    emit_instance_id  VARCHAR,                -- instance that emitted the span
    service_version   VARCHAR,
    status_code       INTEGER,
    page_size         INTEGER,                -- alloc: kv.page_size
    free_mode         VARCHAR,                -- free: immediate / deferred
    free_reason       VARCHAR,                -- free: finished / aborted / retracted
    bootstrap_room    VARCHAR,                -- transfer
    transfer_bytes    BIGINT,
    transfer_backend  VARCHAR,
    layer_offsets_ns  BIGINT[],               -- load: hicache.layer_done_offsets_ns;
                                              -- read: forward.layer_read_offsets_ns
    hicache_num_tokens BIGINT,
    forward_batch_id  VARCHAR,                -- read: parent forward's forward.batch_id
    forward_mode      VARCHAR,                -- read: extend / decode
    page_error        VARCHAR                 -- why kv.page_ranges gave no pages (normalise_kv_events.sql)
);
-- stores made before page_error existed
ALTER TABLE kv_events ADD COLUMN IF NOT EXISTS page_error VARCHAR;

CREATE TABLE IF NOT EXISTS aborts (
    trace_id         VARCHAR NOT NULL,
    span_id          VARCHAR NOT NULL,
    rid              VARCHAR,
    instance_id      VARCHAR,
    host_name        VARCHAR,
    service_version  VARCHAR,
    time_ns          BIGINT,                  -- span start: the abort decision
    abort_reason     VARCHAR,
    poll_state       VARCHAR
);

-- SGLang stage slices (prefill_bootstrap, prefill_forward, prefill_transfer_kv_cache,
-- decode_bootstrap, decode_transferred, decode_waiting, decode_forward): the causal pairs that
-- bound clock offsets come from here. rid / bootstrap_room come from the span or its root.
CREATE TABLE IF NOT EXISTS request_stages (
    trace_id         VARCHAR NOT NULL,
    span_id          VARCHAR NOT NULL,
    name             VARCHAR NOT NULL,
    rid              VARCHAR,
    bootstrap_room   VARCHAR,
    instance_id      VARCHAR,
    host_name        VARCHAR,
    start_ns         BIGINT,
    end_ns           BIGINT
);

CREATE TABLE IF NOT EXISTS feedback (
    trace_id  VARCHAR NOT NULL,
    span_id   VARCHAR NOT NULL,
    rid       VARCHAR,
    label     VARCHAR,                        -- garbled / repetition / ok
    time_ns   BIGINT
);

-- ---------------------------------------------------------------------------------------------
-- Added by ingest/ (bookkeeping; analyses do not read these).

CREATE SEQUENCE IF NOT EXISTS ingested_files_seq START 1;

-- One row per file (or live payload source) whose ingest committed. A file is skipped on re-run
-- when (path, size_bytes, mtime_ns) match a committed row; otherwise it is read again and the
-- dedup on (trace_id, span_id) keeps the store free of doubles.
CREATE TABLE IF NOT EXISTS ingested_files (
    file_id        INTEGER PRIMARY KEY,
    path           VARCHAR NOT NULL,
    size_bytes     BIGINT,
    mtime_ns       BIGINT,
    format         VARCHAR,                   -- otlp-jsonl / otlp-json / otlp-proto / otlp-proto-delimited
    compression    VARCHAR,                   -- none / gzip / zstd
    spans_read     BIGINT,                    -- valid spans decoded
    spans_new      BIGINT,                    -- of which not already stored
    quarantined    BIGINT,                    -- records sent to quarantine
    ingested_at    TIMESTAMP
);

-- Dedup keys: hash(trace_id, span_id) of every row of spans, written in the same transaction.
-- A batch looks its spans up here (8 bytes a stored span to scan, instead of both id strings),
-- and confirms a hit on the ids in spans. open_store rebuilds it when its count differs from
-- spans' (a store written before it existed).
CREATE TABLE IF NOT EXISTS span_keys (
    span_key  UBIGINT NOT NULL
);

-- Records that could not be stored: a bad JSON line, an undecodable protobuf frame, a span with
-- missing or malformed ids or wrongly typed fields. Every good record of the same file is kept.
CREATE TABLE IF NOT EXISTS quarantine (
    source       VARCHAR NOT NULL,            -- file path, or the live source's name
    line         BIGINT,                      -- 1-based line (JSON lines), else NULL
    byte_offset  BIGINT,                      -- offset of the record in the decompressed stream
    span_id      VARCHAR,                     -- the span's id as given, when it had one
    reason       VARCHAR NOT NULL,
    raw          BLOB,                        -- the record's bytes, at most 4 KiB
    raw_bytes    BIGINT,                      -- the record's full length
    quarantined_at TIMESTAMP
);

-- Spans whose normalised rows wait for a relative in a later batch or file: a forward.read whose
-- parent forward is not stored yet ('read'), a stage slice whose rid-carrying ancestor is not
-- stored yet ('stage'). Each batch re-derives the rows of pending spans of the traces it touches.
CREATE TABLE IF NOT EXISTS ingest_pending (
    trace_id        VARCHAR NOT NULL,
    span_id         VARCHAR NOT NULL,
    parent_span_id  VARCHAR,
    kind            VARCHAR NOT NULL
);
