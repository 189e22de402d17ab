-- analysis: kv_ownership
-- description: Who owns which pages when: each kv.alloc of a request, held until that request's
--   first later kv.free whose page range overlaps (same instance, rank and pool). The range test
--   stands in for the exact page test here: a request frees its pages together, and an exact list
--   test on every alloc/free pair costs ~0.2 ms a pair at 1,000 pages (measured).
-- returns: one row per alloc span: alloc_span_id, rid, instance_id, tp_rank, kv_pool, page_ids,
--   page_lo, page_hi, owned_from_ns, owned_until_ns (NULL = never freed in the trace),
--   free_span_id, free_mode, free_reason, service_version.
--   A view: the race analyses need an owner's release for a few allocations only and compute it
--   for those (abort_before_write_complete, page_hazard); this is the whole table for ad-hoc use.
-- materialise: view
WITH allocs AS (
    SELECT span_id, rid, instance_id, tp_rank, kv_pool, page_ids, page_lo, page_hi, start_ns, service_version
    FROM kv_events WHERE op = 'alloc' AND rid IS NOT NULL
),
frees AS (
    SELECT span_id, rid, instance_id, tp_rank, kv_pool, page_ids, page_lo, page_hi, start_ns, free_mode, free_reason
    FROM kv_events WHERE op = 'free' AND rid IS NOT NULL
),
matched AS (
    SELECT a.span_id AS alloc_span_id, f.span_id AS free_span_id, f.start_ns AS free_ns,
           f.free_mode, f.free_reason
    FROM allocs a
    JOIN frees f
      ON f.rid = a.rid AND f.instance_id = a.instance_id AND f.tp_rank = a.tp_rank AND f.kv_pool = a.kv_pool
     AND f.start_ns >= a.start_ns
     AND page_ranges_overlap(a.page_lo, a.page_hi, f.page_lo, f.page_hi)
    QUALIFY row_number() OVER (PARTITION BY a.span_id ORDER BY f.start_ns, f.span_id) = 1
)
SELECT a.span_id AS alloc_span_id, a.rid, a.instance_id, a.tp_rank, a.kv_pool, a.page_ids, a.page_lo, a.page_hi,
       a.start_ns AS owned_from_ns, m.free_ns AS owned_until_ns, m.free_span_id, m.free_mode, m.free_reason,
       a.service_version
FROM allocs a
LEFT JOIN matched m ON m.alloc_span_id = a.span_id
