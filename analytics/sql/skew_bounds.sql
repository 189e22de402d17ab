-- analysis: skew_bounds
-- description: Bounds on the clock offset between each prefill host and decode host, from the
--   causal pairs of the conventions (decode_bootstrap end -> kv.transfer start; kv.transfer end ->
--   decode_transferred end, same bootstrap_room; in stock SGLang traces mooncake_worker_send_session
--   slices, else prefill_transfer_kv_cache, stand in for kv.transfer).
-- returns: one row per (prefill_host, decode_host): offset_lo_ns, offset_hi_ns (offset = prefill
--   clock minus decode clock at one instant; NULL = no evidence on that side), offset_est_ns,
--   n_lower_pairs, n_upper_pairs, consistent (false when the evidence contradicts itself: lo > hi).
--   The estimate is the lower bound when known: its gap (the decode side noticing a finished
--   write) is a poll interval, while the upper bound's gap includes prefill queueing and compute,
--   tens of ms to seconds (measured on simulator runs: lo within 0.5 ms of the truth, hi 40 ms+
--   off). Moving a prefill time with it gives the latest decode-clock time the evidence allows.
WITH transfers AS (
    SELECT bootstrap_room, clock_host AS prefill_host, start_ns, end_ns, status_code
    FROM kv_events
    WHERE op = 'transfer' AND bootstrap_room IS NOT NULL
    UNION ALL
    -- stock SGLang (no kv.transfer): mooncake's send sessions of the room are the write itself
    SELECT bootstrap_room, host_name, min(start_ns), max(end_ns), NULL
    FROM request_stages
    WHERE name = 'mooncake_worker_send_session' AND bootstrap_room IS NOT NULL AND host_name IS NOT NULL
    GROUP BY bootstrap_room, host_name
    UNION ALL
    -- without mooncake's slices: prefill's own transfer stage (successful transfers only)
    SELECT bootstrap_room, host_name, start_ns, end_ns, NULL
    FROM request_stages AS g
    WHERE name = 'prefill_transfer_kv_cache' AND bootstrap_room IS NOT NULL AND host_name IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM kv_events AS k WHERE k.op = 'transfer' AND k.bootstrap_room = g.bootstrap_room)
),
stage_ends AS (
    SELECT bootstrap_room, name, host_name AS decode_host, max(end_ns) AS end_ns
    FROM request_stages
    WHERE name IN ('decode_bootstrap', 'decode_transferred') AND bootstrap_room IS NOT NULL
    GROUP BY ALL
),
-- bootstrap end (decode) <= transfer start (prefill)  =>  offset <= start - bootstrap_end
upper_pairs AS (
    SELECT t.prefill_host, s.decode_host, t.start_ns - s.end_ns AS bound_ns
    FROM transfers t JOIN stage_ends s USING (bootstrap_room)
    WHERE s.name = 'decode_bootstrap' AND t.prefill_host <> s.decode_host
),
-- transfer end (prefill) <= transferred end (decode)  =>  offset >= end - transferred_end
lower_pairs AS (
    SELECT t.prefill_host, s.decode_host, t.end_ns - s.end_ns AS bound_ns
    FROM transfers t JOIN stage_ends s USING (bootstrap_room)
    WHERE s.name = 'decode_transferred' AND coalesce(t.status_code, 0) <> 2 AND t.prefill_host <> s.decode_host
),
upper AS (
    SELECT prefill_host, decode_host, min(bound_ns) AS offset_hi_ns, count(*) AS n_upper_pairs
    FROM upper_pairs GROUP BY ALL
),
lower AS (
    SELECT prefill_host, decode_host, max(bound_ns) AS offset_lo_ns, count(*) AS n_lower_pairs
    FROM lower_pairs GROUP BY ALL
),
bounds AS (
    SELECT prefill_host, decode_host, l.offset_lo_ns, u.offset_hi_ns,
           coalesce(l.n_lower_pairs, 0) AS n_lower_pairs, coalesce(u.n_upper_pairs, 0) AS n_upper_pairs
    FROM lower l FULL OUTER JOIN upper u USING (prefill_host, decode_host)
)
SELECT
    prefill_host,
    decode_host,
    offset_lo_ns,
    offset_hi_ns,
    CAST(CASE
        WHEN offset_lo_ns IS NOT NULL THEN offset_lo_ns
        WHEN offset_hi_ns IS NOT NULL THEN least(offset_hi_ns, 0)
        ELSE 0
    END AS BIGINT) AS offset_est_ns,
    n_lower_pairs,
    n_upper_pairs,
    coalesce(offset_lo_ns <= offset_hi_ns, true) AS consistent
FROM bounds
ORDER BY prefill_host, decode_host
