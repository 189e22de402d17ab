-- analysis: page_hazard
-- description: The general rule: two accesses to one page (instance, rank, pool, page) that
--   conflict (at least one writes; different owners or different streams) and overlap in time with
--   no ordering evidence, other than the named kinds (abort_before_write_complete, unsafe_free,
--   read_before_load). Three shapes: a hicache.load still writing after its owner released the
--   pages and another request got them (SGLang #36738); a load by one request into pages another
--   request's step was still reading after releasing them (vLLM #47324); a request's step reading
--   its own decode pages before the transfer into them completed.
--   A hazard that a named kind already reports (same resource, culprit and victim, shared pages,
--   overlapping window) is left to that kind, so one race is never reported twice.
-- returns: one row per hazard in the findings columns plus shape (load_after_release /
--   write_while_read / read_before_transfer), service_version.
-- requires: kv_ownership, transfer_windows, abort_before_write_complete, unsafe_free, read_before_load
WITH loads AS (
    SELECT span_id, rid, instance_id, tp_rank, kv_pool, page_ids, page_lo, page_hi, start_ns, end_ns, service_version
    FROM kv_events WHERE op = 'load' AND rid IS NOT NULL
),
reads AS (
    SELECT span_id, rid, instance_id, tp_rank, kv_pool, start_ns, end_ns, service_version
    FROM kv_events WHERE op = 'read' AND rid IS NOT NULL
),
-- (a) a load whose owner released (some of) its pages before the load finished
escaping_loads AS (
    SELECT l.*, o.owned_until_ns AS release_ns, o.free_span_id,
           sorted_intersection(l.page_ids, o.page_ids) AS released_pages
    FROM loads l
    JOIN kv_ownership o
      ON o.rid = l.rid AND o.instance_id = l.instance_id AND o.tp_rank = l.tp_rank AND o.kv_pool = l.kv_pool
    WHERE o.owned_from_ns <= l.start_ns AND o.owned_until_ns < l.end_ns
      AND page_set_overlap(l.page_lo, l.page_hi, l.page_ids, o.page_lo, o.page_hi, o.page_ids)
),
-- Time buckets (1 s) make the per-resource range joins below equi-joins: the interval side is
-- expanded to the seconds it spans, the point (or the later-starting interval) meets it in one
-- bucket only, so a pair is met once; the original range predicates still decide.
load_after_release AS (
    SELECT 'load_after_release' AS shape, e.instance_id, e.tp_rank, e.kv_pool,
           sorted_intersection(e.released_pages, n.page_ids) AS pages,
           e.rid AS culprit_rid, n.rid AS victim_rid,
           n.owned_from_ns AS window_start_ns, e.end_ns AS window_end_ns,
           [e.span_id, e.free_span_id, n.alloc_span_id] AS evidence_span_ids, e.service_version
    FROM (SELECT *, unnest(range(release_ns // 1000000000, end_ns // 1000000000 + 1)) AS bucket
          FROM escaping_loads) e
    JOIN (SELECT *, owned_from_ns // 1000000000 AS bucket FROM kv_ownership) n
      ON n.instance_id = e.instance_id AND n.tp_rank = e.tp_rank AND n.kv_pool = e.kv_pool AND n.bucket = e.bucket
     AND n.owned_from_ns >= e.release_ns AND n.owned_from_ns < e.end_ns
    WHERE n.rid <> e.rid
      AND page_set_overlap(n.page_lo, n.page_hi, n.page_ids, e.page_lo, e.page_hi, e.released_pages)
),
-- (b) a step still reading pages its request had already released, while another request loads into them
escaping_reads AS (
    SELECT r.*, o.owned_until_ns AS release_ns, o.free_span_id, o.page_ids, o.page_lo, o.page_hi
    FROM reads r
    JOIN kv_ownership o
      ON o.rid = r.rid AND o.instance_id = r.instance_id AND o.tp_rank = r.tp_rank AND o.kv_pool = r.kv_pool
    WHERE o.owned_from_ns <= r.start_ns AND o.owned_until_ns > r.start_ns AND o.owned_until_ns < r.end_ns
),
write_while_read AS (
    SELECT 'write_while_read' AS shape, e.instance_id, e.tp_rank, e.kv_pool,
           sorted_intersection(e.page_ids, l.page_ids) AS pages,
           l.rid AS culprit_rid, e.rid AS victim_rid,
           greatest(l.start_ns, e.release_ns) AS window_start_ns, least(l.end_ns, e.end_ns) AS window_end_ns,
           [l.span_id, e.span_id, e.free_span_id] AS evidence_span_ids, e.service_version
    FROM (SELECT *, unnest(range(release_ns // 1000000000, end_ns // 1000000000 + 1)) AS bucket
          FROM escaping_reads) e
    JOIN (SELECT *, unnest(range(start_ns // 1000000000, greatest(start_ns, end_ns) // 1000000000 + 1)) AS bucket
          FROM loads) l
      ON l.instance_id = e.instance_id AND l.tp_rank = e.tp_rank AND l.kv_pool = e.kv_pool AND l.bucket = e.bucket
     AND l.bucket = greatest(l.start_ns, e.release_ns) // 1000000000
     AND l.start_ns < e.end_ns AND l.end_ns > e.release_ns
    WHERE l.rid <> e.rid
      AND page_set_overlap(l.page_lo, l.page_hi, l.page_ids, e.page_lo, e.page_hi, e.page_ids)
),
-- (c) a decode step reading a request's pages before the transfer into them completed
read_before_transfer AS (
    SELECT 'read_before_transfer' AS shape, t.instance_id, t.tp_rank, t.kv_pool, t.page_ids AS pages,
           t.rid AS culprit_rid, r.rid AS victim_rid,
           min(r.start_ns) AS window_start_ns, any_value(t.end_est_ns) AS window_end_ns,
           list_concat([t.span_id], list(r.span_id ORDER BY r.start_ns)) AS evidence_span_ids,
           any_value(t.service_version) AS service_version,
           bool_and(t.skew_bounded AND r.start_ns < t.end_earliest_ns) AS all_certain
    FROM transfer_windows t
    JOIN reads r
      ON r.rid = t.rid AND r.instance_id = t.instance_id AND r.tp_rank = t.tp_rank AND r.kv_pool = t.kv_pool
    WHERE r.start_ns < coalesce(t.end_latest_ns, 9223372036854775807) AND r.end_ns > t.start_est_ns
      AND coalesce(t.status_code, 0) <> 2
    GROUP BY t.span_id, t.instance_id, t.tp_rank, t.kv_pool, t.page_ids, t.rid, r.rid
),
hazards AS (
    SELECT *, 'certain' AS confidence FROM load_after_release
    UNION ALL BY NAME
    SELECT *, 'certain' AS confidence FROM write_while_read
    UNION ALL BY NAME
    SELECT * EXCLUDE (all_certain), CASE WHEN all_certain THEN 'certain' ELSE 'possible' END AS confidence
    FROM read_before_transfer
),
named AS (
    SELECT instance, tp_rank, kv_pool, pages, culprit_rid, victim_rid, window_start_ns, window_end_ns
    FROM abort_before_write_complete
    UNION ALL
    SELECT instance, tp_rank, kv_pool, pages, culprit_rid, victim_rid, window_start_ns, window_end_ns FROM unsafe_free
    UNION ALL
    SELECT instance, tp_rank, kv_pool, pages, culprit_rid, victim_rid, window_start_ns, window_end_ns
    FROM read_before_load
)
SELECT
    substr(md5(concat_ws('|', 'page_hazard', shape, array_to_string(evidence_span_ids, ','))), 1, 16) AS finding_id,
    'page_hazard' AS kind,
    instance_id AS instance,
    tp_rank,
    kv_pool,
    pages,
    CAST([] AS INTEGER[]) AS layers,
    culprit_rid,
    victim_rid,
    window_start_ns,
    window_end_ns,
    confidence,
    evidence_span_ids,
    shape,
    service_version
FROM hazards h
WHERE len(pages) > 0
  AND NOT EXISTS (
      SELECT 1 FROM named n
      WHERE n.instance = h.instance_id AND n.tp_rank = h.tp_rank AND n.kv_pool = h.kv_pool
        AND n.culprit_rid = h.culprit_rid AND n.victim_rid IS NOT DISTINCT FROM h.victim_rid
        AND intervals_overlap(n.window_start_ns, greatest(n.window_end_ns, n.window_start_ns + 1),
                              h.window_start_ns, greatest(h.window_end_ns, h.window_start_ns + 1))
        AND pages_intersect(n.pages, h.pages)
  )
ORDER BY instance, tp_rank, kv_pool, window_start_ns, finding_id
