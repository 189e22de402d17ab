-- analysis: abort_before_write_complete
-- description: Bug 1 (SGLang #24527, PR #35049): a transfer into decode pages whose request was
--   released and whose pages were allocated to another request before the write completed.
--   Victim = the request that received the pages; pages = the intersection; window = reuse ..
--   write end (or the victim's own release of the pages, if earlier), on the decode clock.
-- returns: one row per (transfer, reusing alloc), in the findings columns (finding_id, kind,
--   instance, tp_rank, kv_pool, pages, layers, culprit_rid, victim_rid, window_start_ns,
--   window_end_ns, confidence, evidence_span_ids) plus window_end_raw_ns (prefill clock),
--   window_end_earliest_ns, window_end_latest_ns, skew_bounded, free_seen, culprit_clock_host
--   (the prefill host), refute_offset_ns (the finding holds unless the prefill host's clock is at
--   least this far ahead of the decode host's: write end (prefill clock) - reuse (decode clock);
--   NULL on one host), service_version, transfer_span_id, release_span_id.
-- requires: early_releases
WITH allocs AS NOT MATERIALIZED (
    SELECT span_id, rid, instance_id, tp_rank, kv_pool, page_ids, page_lo, page_hi, start_ns,
           start_ns // 1000000000 AS bucket
    FROM kv_events WHERE op = 'alloc' AND rid IS NOT NULL
),
-- Time buckets (1 s) turn the per-resource range join into an equi-join: a release with a bounded
-- window joins only the allocs of the seconds its window spans (an alloc lies in one bucket, so a
-- pair is met once); the range predicates below still decide. Unbounded windows join as before.
bounded AS (
    SELECT e.span_id, e.release_span_id, e.rid, e.instance_id, e.tp_rank, e.kv_pool, e.page_lo, e.page_hi,
           e.released_pages, e.release_ns, e.end_latest_ns,
           unnest(time_buckets(e.release_ns, greatest(e.end_latest_ns, e.release_ns))) AS bucket
    FROM early_releases e WHERE e.end_latest_ns IS NOT NULL
),
-- (transfer, release, reusing alloc): keys and times only; the release's other columns are joined
-- back once the few pairs are known
reused AS (
    SELECT e.span_id, e.release_span_id, a.span_id AS reuse_span_id, a.rid AS reuse_rid, a.start_ns AS reuse_ns,
           a.page_lo AS reuse_lo, a.page_hi AS reuse_hi, sorted_intersection(e.released_pages, a.page_ids) AS pages
    FROM bounded e
    JOIN allocs a
      ON a.instance_id = e.instance_id AND a.tp_rank = e.tp_rank AND a.kv_pool = e.kv_pool AND a.bucket = e.bucket
     AND a.start_ns >= e.release_ns AND a.start_ns < e.end_latest_ns
    WHERE a.rid <> e.rid
      AND page_set_overlap(e.page_lo, e.page_hi, e.released_pages, a.page_lo, a.page_hi, a.page_ids)
    UNION ALL
    SELECT e.span_id, e.release_span_id, a.span_id, a.rid, a.start_ns, a.page_lo, a.page_hi,
           sorted_intersection(e.released_pages, a.page_ids)
    FROM early_releases e
    JOIN allocs a
      ON a.instance_id = e.instance_id AND a.tp_rank = e.tp_rank AND a.kv_pool = e.kv_pool
     AND a.start_ns >= e.release_ns
    WHERE e.end_latest_ns IS NULL AND a.rid <> e.rid
      AND page_set_overlap(e.page_lo, e.page_hi, e.released_pages, a.page_lo, a.page_hi, a.page_ids)
),
-- the victim's own release of the pages: its first kv.free at or after the reusing alloc whose
-- page range overlaps it (kv_ownership's rule), for the reusing allocs only
victim_releases AS (
    SELECT v.reuse_span_id, min(f.start_ns) AS victim_release_ns
    FROM (SELECT DISTINCT r.reuse_span_id, r.reuse_rid, r.reuse_ns, r.reuse_lo, r.reuse_hi, e.instance_id,
                 e.tp_rank, e.kv_pool
          FROM reused r JOIN early_releases e ON e.span_id = r.span_id AND e.release_span_id = r.release_span_id) v
    JOIN kv_events f
      ON f.op = 'free' AND f.rid = v.reuse_rid AND f.instance_id = v.instance_id AND f.tp_rank = v.tp_rank
     AND f.kv_pool = v.kv_pool AND f.start_ns >= v.reuse_ns
     AND page_ranges_overlap(v.reuse_lo, v.reuse_hi, f.page_lo, f.page_hi)
    GROUP BY v.reuse_span_id
),
reuses AS (
    SELECT e.span_id, e.release_span_id, e.rid, e.instance_id, e.tp_rank, e.kv_pool, e.abort_span_ids,
           e.end_raw_ns, e.end_est_ns, e.end_earliest_ns, e.end_latest_ns, e.skew_bounded, e.free_seen,
           e.prefill_host, e.decode_host, e.service_version,
           r.reuse_span_id, r.reuse_rid, r.reuse_ns, r.pages,
           coalesce(v.victim_release_ns, 9223372036854775807) AS victim_release_ns
    FROM reused r
    JOIN early_releases e ON e.span_id = r.span_id AND e.release_span_id = r.release_span_id
    LEFT JOIN victim_releases v ON v.reuse_span_id = r.reuse_span_id
)
SELECT
    substr(md5(concat_ws('|', 'abort_before_write_complete', span_id, reuse_span_id)), 1, 16) AS finding_id,
    'abort_before_write_complete' AS kind,
    instance_id AS instance,
    tp_rank,
    kv_pool,
    pages,
    CAST([] AS INTEGER[]) AS layers,
    rid AS culprit_rid,
    reuse_rid AS victim_rid,
    reuse_ns AS window_start_ns,
    least(greatest(end_est_ns, reuse_ns), victim_release_ns) AS window_end_ns,
    CASE WHEN skew_bounded AND free_seen AND reuse_ns < end_earliest_ns THEN 'certain' ELSE 'possible' END AS confidence,
    list_concat([span_id, release_span_id, reuse_span_id], list_without(abort_span_ids, release_span_id))
        AS evidence_span_ids,
    span_id AS transfer_span_id,
    release_span_id,
    end_raw_ns AS window_end_raw_ns,
    end_earliest_ns AS window_end_earliest_ns,
    end_latest_ns AS window_end_latest_ns,
    skew_bounded,
    free_seen,
    prefill_host AS culprit_clock_host,
    CASE WHEN prefill_host IS DISTINCT FROM decode_host THEN end_raw_ns - reuse_ns END AS refute_offset_ns,
    service_version
FROM reuses
ORDER BY instance, tp_rank, kv_pool, window_start_ns, finding_id
