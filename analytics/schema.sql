-- Result tables that `kvtrace analyze` materialises into the store, owned by analytics/.
-- Each table holds the rows of the analysis of the same name (analytics/sql/<name>.sql); a test
-- checks that the columns here equal what the analysis returns. `analyze` replaces the rows of
-- every table in one transaction and records the run in analysis_runs. Idempotent DDL; columns
-- may be added, never renamed (the app and replay/ read these).

-- Race findings: exactly the conventions' "Findings" fields, then the raw and skew-range
-- window ends, the page_hazard shape (detail) and the culprit's service_version. Read by replay/ and app/.
CREATE TABLE IF NOT EXISTS findings (
    finding_id               VARCHAR,
    kind                     VARCHAR,
    instance                 VARCHAR,
    tp_rank                  INTEGER,
    kv_pool                  VARCHAR,
    pages                    INTEGER[],
    layers                   INTEGER[],
    culprit_rid              VARCHAR,
    victim_rid               VARCHAR,
    window_start_ns          BIGINT,
    window_end_ns            BIGINT,
    confidence               VARCHAR,
    evidence_span_ids        VARCHAR[],
    window_end_raw_ns        BIGINT,
    window_end_earliest_ns   BIGINT,
    window_end_latest_ns     BIGINT,
    detail                   VARCHAR,
    service_version          VARCHAR,
    culprit_clock_host       VARCHAR,
    refute_offset_ns         BIGINT,
    refute_margin            VARCHAR
);
-- added after the first stores were written: the same columns for a store that predates them
ALTER TABLE findings ADD COLUMN IF NOT EXISTS culprit_clock_host VARCHAR;
ALTER TABLE findings ADD COLUMN IF NOT EXISTS refute_offset_ns BIGINT;
ALTER TABLE findings ADD COLUMN IF NOT EXISTS refute_margin VARCHAR;

-- What evidence the store holds (coverage.sql): every verdict starts from it.
CREATE TABLE IF NOT EXISTS coverage (
    evidence                 VARCHAR,
    n                        BIGINT,
    present                  BOOLEAN,
    n_missing                BIGINT
);

-- Clock offset bounds per (prefill host, decode host); offset = prefill clock - decode clock.
CREATE TABLE IF NOT EXISTS skew_bounds (
    prefill_host             VARCHAR,
    decode_host              VARCHAR,
    offset_lo_ns             BIGINT,
    offset_hi_ns             BIGINT,
    offset_est_ns            BIGINT,
    n_lower_pairs            BIGINT,
    n_upper_pairs            BIGINT,
    consistent               BOOLEAN
);

-- One anomaly label (ok / garbled / repetition / aborted) per finished request, with its signals and reasons.
CREATE TABLE IF NOT EXISTS request_anomalies (
    rid                      VARCHAR,
    instance_id              VARCHAR,
    host_name                VARCHAR,
    service_version          VARCHAR,
    prompt_tokens            BIGINT,
    completion_tokens        BIGINT,
    cached_tokens            BIGINT,
    ttft_s                   DOUBLE,
    e2e_s                    DOUBLE,
    start_ns                 BIGINT,
    replacement_ratio        DOUBLE,
    rare_char_ratio          DOUBLE,
    repetition_ratio         DOUBLE,
    spec_accept_length       DOUBLE,
    spec_accept_rate         DOUBLE,
    detector_fired           BOOLEAN,
    detector_kind            VARCHAR,
    first_abnormal_step      INTEGER,
    first_abnormal_ns        BIGINT,
    first_abnormal_tokens    BIGINT,
    feedback_label           VARCHAR,
    anomaly                  VARCHAR,
    reasons                  VARCHAR[],
    finish_reason            VARCHAR
);
ALTER TABLE request_anomalies ADD COLUMN IF NOT EXISTS finish_reason VARCHAR;

-- Attributes used for attribution and comparison, per request.
CREATE TABLE IF NOT EXISTS request_attributes (
    rid                      VARCHAR,
    instance_id              VARCHAR,
    service_version          VARCHAR,
    prompt_tokens            BIGINT,
    context_bucket           VARCHAR,
    concurrency              INTEGER,
    concurrency_bucket       VARCHAR,
    transfer_backend         VARCHAR,
    anomaly                  VARCHAR,
    prefill_instance         VARCHAR,
    had_hicache_load         BOOLEAN,
    transfer_ms              DOUBLE,
    transfer_bucket          VARCHAR,
    n_pages                  BIGINT,
    pages_bucket             VARCHAR,
    attributes               MAP(VARCHAR, VARCHAR)
);
-- derived attributes added later (request_attributes.sql): the same columns for an older store
ALTER TABLE request_attributes ADD COLUMN IF NOT EXISTS prefill_instance VARCHAR;
ALTER TABLE request_attributes ADD COLUMN IF NOT EXISTS had_hicache_load BOOLEAN;
ALTER TABLE request_attributes ADD COLUMN IF NOT EXISTS transfer_ms DOUBLE;
ALTER TABLE request_attributes ADD COLUMN IF NOT EXISTS transfer_bucket VARCHAR;
ALTER TABLE request_attributes ADD COLUMN IF NOT EXISTS n_pages BIGINT;
ALTER TABLE request_attributes ADD COLUMN IF NOT EXISTS pages_bucket VARCHAR;
ALTER TABLE request_attributes ADD COLUMN IF NOT EXISTS attributes MAP(VARCHAR, VARCHAR);

-- Anomalous requests and the findings that explain them (victim joins), with the symptom delay.
CREATE TABLE IF NOT EXISTS anomaly_linkage (
    rid                      VARCHAR,
    anomaly                  VARCHAR,
    reasons                  VARCHAR[],
    instance_id              VARCHAR,
    service_version          VARCHAR,
    explained                BOOLEAN,
    finding_ids              VARCHAR[],
    finding_kinds            VARCHAR[],
    window_start_ns          BIGINT,
    first_abnormal_ns        BIGINT,
    first_abnormal_tokens    BIGINT,
    delay_ns                 BIGINT
);

-- Anomalous requests no finding explains: the leads.
CREATE TABLE IF NOT EXISTS anomaly_leads (
    rid                      VARCHAR,
    anomaly                  VARCHAR,
    reasons                  VARCHAR[],
    instance_id              VARCHAR,
    service_version          VARCHAR,
    prompt_tokens            BIGINT,
    completion_tokens        BIGINT,
    first_abnormal_tokens    BIGINT,
    evidence_strength        BIGINT,
    has_feedback             BOOLEAN
);

-- Anomaly rate per 10,000 requests and finding counts per service.version.
CREATE TABLE IF NOT EXISTS anomaly_rate_by_version (
    service_version          VARCHAR,
    requests                 BIGINT,
    anomalies                BIGINT,
    garbled                  BIGINT,
    repetition               BIGINT,
    per_10k                  DOUBLE,
    explained                BIGINT,
    unexplained              BIGINT,
    findings                 BIGINT,
    abort_before_write_complete BIGINT,
    unsafe_free              BIGINT,
    read_before_load         BIGINT,
    page_hazard              BIGINT,
    first_start_ns           BIGINT,
    last_start_ns            BIGINT
);

-- Relative risk of an anomaly for findings' victims vs everyone else, per finding kind and 'any'.
CREATE TABLE IF NOT EXISTS relative_risk (
    exposure                 VARCHAR,
    exposed                  BIGINT,
    exposed_anomalous        BIGINT,
    unexposed                BIGINT,
    unexposed_anomalous      BIGINT,
    risk_exposed             DOUBLE,
    risk_unexposed           DOUBLE,
    relative_risk            DOUBLE
);

-- BubbleUp-style attribution: attribute values whose share differs most between anomalous and normal.
CREATE TABLE IF NOT EXISTS attribute_attribution (
    attribute                VARCHAR,
    value                    VARCHAR,
    anomalous                BIGINT,
    normal                   BIGINT,
    share_anomalous          DOUBLE,
    share_normal             DOUBLE,
    difference               DOUBLE
);

-- Versions side by side by context-length bucket: throughput, TTFT, cache hit rate.
CREATE TABLE IF NOT EXISTS version_comparison (
    service_version          VARCHAR,
    context_bucket           VARCHAR,
    requests                 BIGINT,
    output_tokens_per_s      DOUBLE,
    ttft_p50_s               DOUBLE,
    ttft_p90_s               DOUBLE,
    cache_hit_rate           DOUBLE,
    anomalies_per_10k        DOUBLE
);

-- The online speculative-acceptance monitor replayed per request: whether and when it fired.
CREATE TABLE IF NOT EXISTS spec_step_detector (
    rid                      VARCHAR,
    instance_id              VARCHAR,
    service_version          VARCHAR,
    n_steps                  BIGINT,
    fired                    BOOLEAN,
    fire_kind                VARCHAR,
    fire_step                INTEGER,
    fire_ns                  BIGINT,
    fire_tokens              BIGINT
);

-- One row per `kvtrace analyze` run.
CREATE TABLE IF NOT EXISTS analysis_runs (
    run_at          TIMESTAMP WITH TIME ZONE,
    kvtrace_version VARCHAR,
    analyses        VARCHAR[],
    params          JSON,
    seconds         DOUBLE
);
-- what the store held when the run read it (analytics/reuse.py): `kvtrace report` reuses the stored
-- results while the store still matches it
ALTER TABLE analysis_runs ADD COLUMN IF NOT EXISTS store_fingerprint VARCHAR;

-- Which incident each finding belongs to (finding_incidents.sql): one culprit action and its
-- victims over every TP rank and KV pool. Read by app/ and the report.
CREATE TABLE IF NOT EXISTS finding_incidents (
    finding_id               VARCHAR,
    incident_id              VARCHAR,
    kind                     VARCHAR,
    incident_kind            VARCHAR,
    shape                    VARCHAR,
    instance                 VARCHAR,
    culprit_rid              VARCHAR,
    culprit_action           VARCHAR,
    culprit_span_id          VARCHAR,
    bootstrap_room           VARCHAR,
    action_start_ns          BIGINT,
    action_end_ns            BIGINT,
    action_key               VARCHAR
);

-- Incidents (incidents.sql): the unit of the verdict, the Findings page and the report.
CREATE TABLE IF NOT EXISTS incidents (
    incident_id              VARCHAR,
    kind                     VARCHAR,
    shape                    VARCHAR,
    instance                 VARCHAR,
    culprit_rid              VARCHAR,
    culprit_action           VARCHAR,
    culprit_span_ids         VARCHAR[],
    bootstrap_room           VARCHAR,
    action_start_ns          BIGINT,
    action_end_ns            BIGINT,
    victim_rids              VARCHAR[],
    n_victims                BIGINT,
    tp_ranks                 INTEGER[],
    kv_pools                 VARCHAR[],
    n_pages                  BIGINT,
    window_start_ns          BIGINT,
    window_end_ns            BIGINT,
    confidence               VARCHAR,
    n_findings               BIGINT,
    finding_ids              VARCHAR[],
    finding_kinds            VARCHAR[],
    n_certain                BIGINT,
    service_version          VARCHAR
);
