-- analysis: incidents
-- description: Findings grouped into incidents, the unit of the verdict: one culprit action (a
--   transfer released early, a HiCache load, an aborted request) and all its victims, however many
--   TP ranks, KV pools and victims its findings are counted over (finding_incidents.sql says how).
-- returns: one row per incident: incident_id, kind (abort_before_write_complete when any finding
--   of an abort is one, else the findings' kind), shape (page_hazard's), instance, culprit_rid,
--   culprit_action (kv.transfer / hicache.load / aborted decode request), culprit_span_ids (the
--   culprit's spans, one per rank and pool), bootstrap_room, action_start_ns, action_end_ns (on
--   the culprit's host's clock), victim_rids (sorted, distinct; abort_during_transfer: candidates),
--   n_victims, tp_ranks, kv_pools (covered, sorted), n_pages (distinct (rank, pool, page) slots),
--   window_start_ns, window_end_ns (earliest start .. latest end over the findings, clock of
--   `instance`), confidence (certain if any finding is), n_findings, finding_ids (sorted),
--   finding_kinds (sorted, distinct), n_certain, service_version.
-- requires: finding_incidents, findings
WITH members AS (
    SELECT i.incident_id, i.incident_kind, i.shape, i.culprit_action, i.culprit_span_id, i.bootstrap_room,
           i.action_start_ns, i.action_end_ns, f.*
    FROM finding_incidents AS i
    JOIN findings AS f USING (finding_id)
),
slots AS (
    SELECT incident_id, count(*) AS n_pages
    FROM (SELECT DISTINCT incident_id, tp_rank, kv_pool, unnest(pages) AS page FROM members)
    GROUP BY incident_id
)
SELECT
    m.incident_id,
    any_value(m.incident_kind) AS kind,
    any_value(m.shape) AS shape,
    any_value(m.instance) AS instance,
    any_value(m.culprit_rid) AS culprit_rid,
    any_value(m.culprit_action) AS culprit_action,
    list_sort(list_distinct(list(m.culprit_span_id))) AS culprit_span_ids,
    any_value(m.bootstrap_room) AS bootstrap_room,
    min(m.action_start_ns) AS action_start_ns,
    max(m.action_end_ns) AS action_end_ns,
    list_sort(list_distinct(list(m.victim_rid))) AS victim_rids,
    CAST(count(DISTINCT m.victim_rid) AS BIGINT) AS n_victims,
    CAST(list_sort(list_distinct(list(m.tp_rank))) AS INTEGER[]) AS tp_ranks,
    list_sort(list_distinct(list(m.kv_pool))) AS kv_pools,
    CAST(coalesce(any_value(s.n_pages), 0) AS BIGINT) AS n_pages,
    min(m.window_start_ns) AS window_start_ns,
    max(m.window_end_ns) AS window_end_ns,
    CASE WHEN bool_or(m.confidence = 'certain') THEN 'certain' ELSE 'possible' END AS confidence,
    CAST(count(*) AS BIGINT) AS n_findings,
    list_sort(list(m.finding_id)) AS finding_ids,
    list_sort(list_distinct(list(m.kind))) AS finding_kinds,
    CAST(count(*) FILTER (WHERE m.confidence = 'certain') AS BIGINT) AS n_certain,
    any_value(m.service_version) AS service_version
FROM members AS m
LEFT JOIN slots AS s USING (incident_id)
GROUP BY m.incident_id
ORDER BY kind, instance, window_start_ns, incident_id
