-- derive_kv_events: kv.alloc / kv.free / kv.transfer / hicache.load spans -> rows of table
-- kv_events (one each). Reads: new_spans. Gives: the rows to insert into kv_events. forward.read
-- rows come from normalise_reads.sql (they need the parent forward).
--
-- How the span-local files run (derive_*.sql, local_*.sql; the lists DERIVED_TABLES and
-- LOCAL_TABLES in ingest/merge.py name them): each is one SELECT, whose rows follow from each
-- span alone. For file ingest they run per batch in a decode worker's private DuckDB (Deriver),
-- with new_spans = the batch's spans (first copies); the store then inserts the rows of the spans
-- it adds. For a live payload they run on the store's connection, on its new_spans. The
-- local_<name>.sql results are registered as batch_<name> (read by later files, and by the
-- normalisation on the store that needs other spans); derive_<table>.sql rows go to <table>.
--
-- The page resource is (instance_id, tp_rank, kv_pool, page): for a transfer the destination
-- (kv.transfer.dst_instance / dst_rank); times stay on the emitter's clock (clock_host).
-- Page sets (docs/conventions.md): `kv.page_ids` (v1, every page id) or `kv.page_ranges` (v2,
-- inclusive runs flattened [first0, last0, first1, last1, ...]). Ranges expand, pair by pair, to
-- the id list they stand for, so a span gives the same row either way (page_ids sorted, page_lo,
-- page_hi, n_pages). A span with both gets their union, each page once (a page named by either
-- is held: for a race detector a missed page is a missed race). A ranges array that cannot be
-- expanded (not integers, odd length, a negative page id or one beyond 2^31-1, last < first, or
-- more than 4,194,304 pages: more than one GPU's pool holds at page size 1, and 16 MiB of ids)
-- contributes no pages and says why in page_error. The span itself is stored as it came (its
-- attributes in spans), so nothing is lost: `SELECT * FROM kv_events WHERE page_error IS NOT NULL`.
-- Every check is bounded by the array's own length, and the expansion is sized by clamped
-- bounds times 0 or 1, so a bad array never allocates its claimed size, however evaluated.
WITH parsed AS (
    -- one JSON parse per span for all paths (json_extract with a list of paths); v[i]->>'$' is
    -- then what attributes->>path gives
    SELECT
        *,
        CASE name
            WHEN 'kv.alloc' THEN 'alloc'
            WHEN 'kv.free' THEN 'free'
            WHEN 'kv.transfer' THEN 'transfer'
            WHEN 'hicache.load' THEN 'load'
        END AS op,
        json_extract(attributes, [
            '$."kv.page_ids"', '$."kv.transfer.dst_instance"', '$."kv.transfer.dst_rank"', '$.tp_rank',
            '$."kv.pool"', '$."kv.page_size"', '$."kv.free.mode"', '$."kv.free.reason"', '$.bootstrap_room',
            '$."kv.transfer.bytes"', '$."kv.transfer.backend"', '$."hicache.layer_done_offsets_ns"',
            '$."hicache.num_tokens"', '$."kv.page_ranges"']) AS v
    FROM new_spans
    WHERE name IN ('kv.alloc', 'kv.free', 'kv.transfer', 'hicache.load')
),
ranged AS (
    -- r: kv.page_ranges as BIGINT (NULL when absent or not an int array), rc: clamped to
    -- [0, 2^31-1], pairs: the 1-based index of each pair's first
    SELECT *, list_transform(r, lambda x: least(greatest(x, 0), 2147483647)) AS rc,
           generate_series(1, len(r) - 1, 2) AS pairs
    FROM (SELECT *, TRY_CAST(v[14] AS BIGINT[]) AS r FROM parsed)
),
checked AS (
    SELECT *,
        CASE
            WHEN v[14] IS NULL THEN NULL
            WHEN r IS NULL OR list_count(r) < len(r) THEN 'kv.page_ranges is not an array of integers'
            WHEN len(r) % 2 = 1 THEN format('kv.page_ranges has odd length {} (pairs of first, last expected)', len(r))
            WHEN list_min(r) < 0 THEN format('kv.page_ranges has a negative page id ({})', list_min(r))
            WHEN list_max(r) > 2147483647 THEN format('kv.page_ranges page id {} is beyond 2^31-1', list_max(r))
            WHEN list_bool_or(list_transform(pairs, lambda i: r[i + 1] < r[i])) THEN format(
                'kv.page_ranges pair {} has last < first ({}, {})',
                list_position(list_transform(pairs, lambda i: r[i + 1] < r[i]), true),
                r[2 * list_position(list_transform(pairs, lambda i: r[i + 1] < r[i]), true) - 1],
                r[2 * list_position(list_transform(pairs, lambda i: r[i + 1] < r[i]), true)])
            WHEN list_sum(list_transform(pairs, lambda i: rc[i + 1] - rc[i] + 1)) > 4194304 THEN format(
                'kv.page_ranges names {} pages, more than the 4194304 one span may hold',
                list_sum(list_transform(pairs, lambda i: rc[i + 1] - rc[i] + 1)))
        END AS page_error
    FROM ranged
),
expanded AS (
    SELECT *,
        TRY_CAST(v[1] AS INTEGER[]) AS ids,
        -- the pairs as runs in order of their first page (a few a span: cheap to sort), so that
        -- when no two overlap their expansion is in order already: sorting thousands of page ids
        -- a span was most of this query's time
        CASE WHEN v[14] IS NOT NULL AND page_error IS NULL THEN
            list_sort(list_transform(pairs, lambda i: {'lo': rc[i], 'hi': rc[i + 1]}))
        END AS runs
    FROM checked
),
runs AS (
    SELECT *,
        flatten(list_transform(runs, lambda x:
            range(x.lo, x.lo + (x.hi - x.lo + 1) * (page_error IS NULL)::BIGINT)))::INTEGER[] AS from_ranges,
        coalesce(list_bool_and(list_transform(range(2, len(runs) + 1), lambda j: runs[j].lo > runs[j - 1].hi)), true)
            AS runs_disjoint
    FROM expanded
),
ops AS (
    SELECT *,
        CASE WHEN from_ranges IS NULL THEN list_sort(ids)
             WHEN v[1] IS NULL THEN CASE WHEN runs_disjoint THEN from_ranges ELSE list_sort(from_ranges) END
             ELSE list_sort(list_distinct(list_concat(ids, from_ranges)))
        END AS pages
    FROM runs
)
SELECT
    trace_id, span_id, parent_span_id, op, rid,
    CASE WHEN op = 'transfer' THEN v[2]->>'$' ELSE instance_id END AS instance_id,
    TRY_CAST(CASE WHEN op = 'transfer' THEN v[3]->>'$' ELSE v[4]->>'$' END AS INTEGER) AS tp_rank,
    v[5]->>'$' AS kv_pool,
    coalesce(pages, []::INTEGER[]) AS page_ids,
    list_min(pages) AS page_lo,
    list_max(pages) AS page_hi,
    coalesce(len(pages), 0)::INTEGER AS n_pages,
    start_ns, end_ns,
    host_name AS clock_host,
    instance_id AS emit_instance_id,
    service_version, status_code,
    TRY_CAST(v[6]->>'$' AS INTEGER) AS page_size,
    v[7]->>'$' AS free_mode,
    v[8]->>'$' AS free_reason,
    -- as requests and request_stages store it: 16 zero-padded hex digits ("0x5f3a" too)
    CASE WHEN op <> 'transfer' THEN NULL
         WHEN v[9]->>'$' ILIKE '0x%' THEN lpad(lower(substr(v[9]->>'$', 3)), 16, '0')
         ELSE v[9]->>'$' END AS bootstrap_room,
    TRY_CAST(v[10]->>'$' AS BIGINT) AS transfer_bytes,
    v[11]->>'$' AS transfer_backend,
    CASE WHEN op = 'load' THEN TRY_CAST(v[12] AS BIGINT[]) END AS layer_offsets_ns,
    TRY_CAST(v[13]->>'$' AS BIGINT) AS hicache_num_tokens,
    page_error
FROM ops
