-- analysis: finding_incidents
-- description: The incident each finding belongs to. An incident is one culprit action and its
--   victims over every TP rank and KV pool it touched: the culprit's kv.transfer into decode pages
--   that it released early (abort_before_write_complete and unsafe_free of one abort are one
--   incident), its hicache.load (read_before_load, page_hazard), or, for abort_during_transfer,
--   the aborted decode request. A finding's culprit action is its first evidence span (every
--   finding kind lists it first). Transfers of one action share their bootstrap_room; loads (and
--   transfers without a room) of one culprit on one instance whose spans overlap in time are one
--   action (each rank and pool loads in parallel).
-- returns: one row per finding: finding_id, incident_id (16 hex digits, a hash of the incident's
--   kind family, instance, culprit rid and action key: the same for the same evidence, whatever
--   else the store holds), kind (the finding's), incident_kind (abort_before_write_complete when
--   any finding of an abort incident is one, else the findings' kind), shape (page_hazard's),
--   instance, culprit_rid, culprit_action (kv.transfer / hicache.load / aborted decode request),
--   culprit_span_id, bootstrap_room, action_start_ns, action_end_ns (the culprit span, on its own
--   host's clock), action_key (room <id> or the action's first start).
-- requires: findings
WITH f AS (
    SELECT finding_id, kind, detail AS shape, instance, culprit_rid, evidence_span_ids[1] AS culprit_span_id,
           CASE WHEN kind IN ('abort_before_write_complete', 'unsafe_free') THEN 'abort'
                WHEN kind = 'page_hazard' THEN 'page_hazard:' || coalesce(detail, '')
                ELSE kind END AS family
    FROM findings
),
kv_actions AS (
    SELECT k.span_id, k.rid, any_value(k.op) AS op, any_value(k.bootstrap_room) AS bootstrap_room,
           min(k.start_ns) AS start_ns, max(k.end_ns) AS end_ns
    FROM kv_events AS k
    SEMI JOIN f ON f.culprit_span_id = k.span_id AND f.culprit_rid = k.rid AND f.kind <> 'abort_during_transfer'
    WHERE k.op IN ('transfer', 'load')
    GROUP BY ALL
),
request_actions AS (
    SELECT r.span_id, r.rid, any_value(r.bootstrap_room) AS bootstrap_room,
           min(r.start_ns) AS start_ns, max(r.end_ns) AS end_ns
    FROM requests AS r
    SEMI JOIN f ON f.culprit_span_id = r.span_id AND f.culprit_rid = r.rid AND f.kind = 'abort_during_transfer'
    GROUP BY ALL
),
actions AS (
    SELECT f.*,
           CASE WHEN f.kind = 'abort_during_transfer' THEN 'aborted decode request'
                WHEN k.op = 'transfer' THEN 'kv.transfer'
                WHEN k.op = 'load' THEN 'hicache.load'
                WHEN f.family = 'abort' OR f.shape = 'read_before_transfer' THEN 'kv.transfer'
                ELSE 'hicache.load' END AS culprit_action,
           CASE WHEN f.kind = 'abort_during_transfer' THEN r.bootstrap_room ELSE k.bootstrap_room END
               AS bootstrap_room,
           CASE WHEN f.kind = 'abort_during_transfer' THEN r.start_ns ELSE k.start_ns END AS action_start_ns,
           CASE WHEN f.kind = 'abort_during_transfer' THEN r.end_ns ELSE k.end_ns END AS action_end_ns
    FROM f
    LEFT JOIN kv_actions AS k ON k.span_id = f.culprit_span_id AND k.rid = f.culprit_rid
    LEFT JOIN request_actions AS r ON r.span_id = f.culprit_span_id AND r.rid = f.culprit_rid
),
-- without a room: islands of overlapping culprit spans per (family, instance, culprit)
flagged AS (
    SELECT *,
           CASE WHEN bootstrap_room IS NOT NULL THEN 0
                WHEN action_start_ns <= max(action_end_ns) OVER (
                         PARTITION BY family, instance, culprit_rid, bootstrap_room
                         ORDER BY action_start_ns, finding_id
                         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) THEN 0
                ELSE 1 END AS new_island
    FROM actions
),
islands AS (
    SELECT *,
           sum(new_island) OVER (PARTITION BY family, instance, culprit_rid, bootstrap_room
                                 ORDER BY action_start_ns, finding_id ROWS UNBOUNDED PRECEDING) AS island
    FROM flagged
),
keyed AS (
    SELECT *,
           coalesce('room ' || bootstrap_room,
                    'from ' || CAST(min(action_start_ns) OVER (PARTITION BY family, instance, culprit_rid,
                                                                bootstrap_room, island) AS VARCHAR),
                    'finding ' || finding_id) AS action_key
    FROM islands
),
incident_of AS (
    SELECT *,
           substr(md5(concat_ws('|', 'incident', family, coalesce(instance, ''), coalesce(culprit_rid, ''),
                                action_key)), 1, 16) AS incident_id
    FROM keyed
)
SELECT
    finding_id,
    incident_id,
    kind,
    CASE WHEN family = 'abort'
         THEN CASE WHEN bool_or(kind = 'abort_before_write_complete') OVER (PARTITION BY incident_id)
                   THEN 'abort_before_write_complete' ELSE 'unsafe_free' END
         ELSE kind END AS incident_kind,
    CAST(shape AS VARCHAR) AS shape,
    instance,
    culprit_rid,
    culprit_action,
    CAST(culprit_span_id AS VARCHAR) AS culprit_span_id,
    CAST(bootstrap_room AS VARCHAR) AS bootstrap_room,
    CAST(action_start_ns AS BIGINT) AS action_start_ns,
    CAST(action_end_ns AS BIGINT) AS action_end_ns,
    action_key
FROM incident_of
ORDER BY incident_id, finding_id
