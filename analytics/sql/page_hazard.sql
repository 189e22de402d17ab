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
-- requires: transfer_windows, abort_before_write_complete, unsafe_free, read_before_load
WITH loads AS NOT MATERIALIZED (
    SELECT span_id, rid, instance_id, tp_rank, kv_pool, page_ids, page_lo, page_hi, start_ns, end_ns, service_version
    FROM kv_events WHERE op = 'load' AND rid IS NOT NULL
),
reads AS NOT MATERIALIZED (
    SELECT span_id, rid, instance_id, tp_rank, kv_pool, start_ns, end_ns, service_version
    FROM kv_events WHERE op = 'read' AND rid IS NOT NULL
),
allocs AS NOT MATERIALIZED (
    SELECT span_id, rid, instance_id, tp_rank, kv_pool, page_ids, page_lo, page_hi, start_ns
    FROM kv_events WHERE op = 'alloc' AND rid IS NOT NULL
),
frees AS NOT MATERIALIZED (
    SELECT span_id, rid, instance_id, tp_rank, kv_pool, page_lo, page_hi, start_ns
    FROM kv_events WHERE op = 'free' AND rid IS NOT NULL
),
-- An owner's release (kv_ownership's rule: the request's first kv.free at or after the alloc whose
-- page range overlaps it) is computed here only for the allocs of the few accesses a free of the
-- same request can end inside of: a load with a free of its request before its end (shape a), a
-- read with one during it (shape b).
accesses AS (
    SELECT 'load' AS access, span_id, rid, instance_id, tp_rank, kv_pool, start_ns, end_ns FROM loads
    UNION ALL
    SELECT 'read' AS access, span_id, rid, instance_id, tp_rank, kv_pool, start_ns, end_ns FROM reads
),
-- the accesses a free of their request falls before the end of (a load) or during (a read)
late_accesses AS MATERIALIZED (
    SELECT DISTINCT x.access, x.span_id, x.rid, x.instance_id, x.tp_rank, x.kv_pool
    FROM accesses x
    JOIN frees f
      ON f.rid = x.rid AND f.instance_id = x.instance_id AND f.tp_rank = x.tp_rank AND f.kv_pool = x.kv_pool
     AND f.start_ns < x.end_ns
    WHERE x.access = 'load' OR f.start_ns > x.start_ns
),
-- their requests' allocs and frees (the joins below then meet the candidates' rows only)
held_allocs AS MATERIALIZED (
    SELECT a.* FROM allocs a
    WHERE EXISTS (SELECT 1 FROM late_accesses x
                  WHERE x.rid = a.rid AND x.instance_id = a.instance_id AND x.tp_rank = a.tp_rank
                    AND x.kv_pool = a.kv_pool)
),
held_frees AS MATERIALIZED (
    SELECT f.* FROM frees f
    WHERE EXISTS (SELECT 1 FROM late_accesses x
                  WHERE x.rid = f.rid AND x.instance_id = f.instance_id AND x.tp_rank = f.tp_rank
                    AND x.kv_pool = f.kv_pool)
),
-- (a) a load whose owner released (some of) its pages before the load finished
load_candidates AS MATERIALIZED (
    SELECT l.* FROM loads l
    WHERE EXISTS (SELECT 1 FROM late_accesses x WHERE x.access = 'load' AND x.span_id = l.span_id
                    AND x.rid = l.rid AND x.instance_id = l.instance_id AND x.tp_rank = l.tp_rank
                    AND x.kv_pool = l.kv_pool)
),
escaping_loads AS (
    SELECT l.span_id, l.rid, l.instance_id, l.tp_rank, l.kv_pool, l.page_ids, l.page_lo, l.page_hi, l.start_ns,
           l.end_ns, l.service_version, f.start_ns AS release_ns, f.span_id AS free_span_id,
           sorted_intersection(l.page_ids, a.page_ids) AS released_pages
    FROM load_candidates l
    JOIN held_allocs a
      ON a.rid = l.rid AND a.instance_id = l.instance_id AND a.tp_rank = l.tp_rank AND a.kv_pool = l.kv_pool
     AND a.start_ns <= l.start_ns
    JOIN held_frees f
      ON f.rid = a.rid AND f.instance_id = a.instance_id AND f.tp_rank = a.tp_rank AND f.kv_pool = a.kv_pool
     AND f.start_ns >= a.start_ns AND f.start_ns < l.end_ns
     AND page_ranges_overlap(a.page_lo, a.page_hi, f.page_lo, f.page_hi)
    WHERE page_set_overlap(l.page_lo, l.page_hi, l.page_ids, a.page_lo, a.page_hi, a.page_ids)
    QUALIFY row_number() OVER (PARTITION BY l.span_id, a.span_id ORDER BY f.start_ns, f.span_id) = 1
),
-- Time buckets (1 s) make the per-resource range joins below equi-joins: the interval side is
-- expanded to the seconds it spans, the point (or the later-starting interval) meets it in one
-- bucket only, so a pair is met once; the original range predicates still decide.
load_after_release AS (
    SELECT 'load_after_release' AS shape, e.instance_id, e.tp_rank, e.kv_pool,
           sorted_intersection(e.released_pages, n.page_ids) AS pages,
           e.rid AS culprit_rid, n.rid AS victim_rid,
           n.start_ns AS window_start_ns, e.end_ns AS window_end_ns,
           [e.span_id, e.free_span_id, n.span_id] AS evidence_span_ids, e.service_version
    FROM (SELECT *, unnest(time_buckets(release_ns, end_ns)) AS bucket FROM escaping_loads) e
    JOIN (SELECT *, start_ns // 1000000000 AS bucket FROM allocs) n
      ON n.instance_id = e.instance_id AND n.tp_rank = e.tp_rank AND n.kv_pool = e.kv_pool AND n.bucket = e.bucket
     AND n.start_ns >= e.release_ns AND n.start_ns < e.end_ns
    WHERE n.rid <> e.rid
      AND page_set_overlap(n.page_lo, n.page_hi, n.page_ids, e.page_lo, e.page_hi, e.released_pages)
),
-- (b) a step still reading pages its request had already released, while another request loads into them
read_candidates AS MATERIALIZED (
    SELECT r.* FROM reads r
    WHERE EXISTS (SELECT 1 FROM late_accesses x WHERE x.access = 'read' AND x.span_id = r.span_id
                    AND x.rid = r.rid AND x.instance_id = r.instance_id AND x.tp_rank = r.tp_rank
                    AND x.kv_pool = r.kv_pool)
),
escaping_reads AS (
    SELECT * FROM (
        SELECT r.span_id, r.rid, r.instance_id, r.tp_rank, r.kv_pool, r.start_ns, r.end_ns, r.service_version,
               f.start_ns AS release_ns, f.span_id AS free_span_id, a.page_ids, a.page_lo, a.page_hi
        FROM read_candidates r
        JOIN held_allocs a
          ON a.rid = r.rid AND a.instance_id = r.instance_id AND a.tp_rank = r.tp_rank AND a.kv_pool = r.kv_pool
         AND a.start_ns <= r.start_ns
        JOIN held_frees f
          ON f.rid = a.rid AND f.instance_id = a.instance_id AND f.tp_rank = a.tp_rank AND f.kv_pool = a.kv_pool
         AND f.start_ns >= a.start_ns AND f.start_ns < r.end_ns
         AND page_ranges_overlap(a.page_lo, a.page_hi, f.page_lo, f.page_hi)
        QUALIFY row_number() OVER (PARTITION BY r.span_id, a.span_id ORDER BY f.start_ns, f.span_id) = 1
    ) AS first_release
    WHERE release_ns > start_ns
),
write_while_read AS (
    SELECT 'write_while_read' AS shape, e.instance_id, e.tp_rank, e.kv_pool,
           sorted_intersection(e.page_ids, l.page_ids) AS pages,
           l.rid AS culprit_rid, e.rid AS victim_rid,
           greatest(l.start_ns, e.release_ns) AS window_start_ns, least(l.end_ns, e.end_ns) AS window_end_ns,
           [l.span_id, e.span_id, e.free_span_id] AS evidence_span_ids, e.service_version
    FROM (SELECT *, unnest(time_buckets(release_ns, end_ns)) AS bucket FROM escaping_reads) e
    JOIN (SELECT *, unnest(time_buckets(start_ns, greatest(start_ns, end_ns))) AS bucket FROM loads) l
      ON l.instance_id = e.instance_id AND l.tp_rank = e.tp_rank AND l.kv_pool = e.kv_pool AND l.bucket = e.bucket
     AND l.bucket = greatest(l.start_ns, e.release_ns) // 1000000000
     AND l.start_ns < e.end_ns AND l.end_ns > e.release_ns
    WHERE l.rid <> e.rid
      AND page_set_overlap(l.page_lo, l.page_hi, l.page_ids, e.page_lo, e.page_hi, e.page_ids)
),
-- (c) a decode step reading a request's pages before the transfer into them completed
read_before_transfer_keys AS MATERIALIZED (
    SELECT t.span_id, t.trace_id, t.instance_id, t.tp_rank, t.kv_pool, t.rid AS culprit_rid, r.rid AS victim_rid,
           min(r.start_ns) AS window_start_ns, any_value(t.end_est_ns) AS window_end_ns,
           list_concat([t.span_id], list(r.span_id ORDER BY r.start_ns)) AS evidence_span_ids,
           any_value(t.service_version) AS service_version,
           bool_and(t.skew_bounded AND r.start_ns < t.end_earliest_ns) AS all_certain
    FROM transfer_windows t
    JOIN reads r
      ON r.rid = t.rid AND r.instance_id = t.instance_id AND r.tp_rank = t.tp_rank AND r.kv_pool = t.kv_pool
    WHERE r.start_ns < coalesce(t.end_latest_ns, 9223372036854775807) AND r.end_ns > t.start_est_ns
      AND coalesce(t.status_code, 0) <> 2
    GROUP BY t.span_id, t.trace_id, t.instance_id, t.tp_rank, t.kv_pool, t.rid, r.rid
),
-- the transfer's pages, read for the few transfers found (not carried through the join above)
read_before_transfer AS (
    SELECT 'read_before_transfer' AS shape, k.instance_id, k.tp_rank, k.kv_pool, p.page_ids AS pages,
           k.culprit_rid, k.victim_rid, k.window_start_ns, k.window_end_ns, k.evidence_span_ids,
           k.service_version, k.all_certain
    FROM read_before_transfer_keys k
    JOIN (SELECT span_id, trace_id, page_ids FROM kv_events
          WHERE op = 'transfer' AND span_id IN (SELECT span_id FROM read_before_transfer_keys)) p
      ON p.span_id = k.span_id AND p.trace_id = k.trace_id
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
