-- analysis: abort_during_transfer
-- description: Bug 1 at request level, for traces without kvtrace's page spans (stock SGLang): a
--   decode request that ended aborted or failed while the prefill's write for its bootstrap_room
--   was still running, with every decode request on the same instance that got its pages inside
--   that window as a candidate victim. Always `possible`: no page is known to be shared.
-- returns: one row per (aborted decode request, candidate victim), or one row with no victim when
--   none was admitted in the window, in the findings columns (pages and layers empty, tp_rank and
--   kv_pool NULL), window = victim's admission (or the abort) .. the write's end on the decode
--   clock; plus window_end_raw_ns (write end, prefill clock), window_end_earliest_ns /
--   window_end_latest_ns (over every clock offset the evidence allows; NULL = unbounded),
--   culprit_clock_host (the prefill host), refute_offset_ns (the finding holds unless the prefill
--   host's clock is at least this far ahead of the decode host's; NULL on one host), abort_ns,
--   write_end_source.
--   The abort is the request.abort span's time when there is one; else the earliest of the end of
--   the last decode stage slice SGLang closed for it (it was alive until then; its pages may be
--   freed any time after), an ERROR thread span under the decode root, the root's end. The write's end is the last `mooncake_worker_send_session` or
--   `mooncake_worker_send` end of the room, over every prefill TP rank's Sender trace (the RDMA
--   write itself, also after the decode side gave up); without the mooncake trace
--   module, the end of the prefill request whose transfer failed (ERROR thread span naming the
--   transfer) or finished (prefill_transfer_kv_cache): the last moment the prefill side still held
--   the transfer open, a lower bound of the write's end (a later write stays unseen). Rooms whose
--   prefill instance emits kv.* spans are left to the page-level analyses. Admission is the victim's
--   `decode_bootstrap` end (pages allocated, indices sent), else its root's start.
-- requires: skew_bounds
WITH decode_roots AS (
    SELECT trace_id, span_id, rid, instance_id, host_name, bootstrap_room, start_ns, end_ns,
           finish_reason, service_version
    FROM requests
    WHERE role = 'decode'
),
-- culprits can only be decode requests whose room no kv.transfer covers (those rooms are left to
-- the page-level analyses): every step below is restricted to them first, so a trace with
-- kvtrace's page spans pays for this analysis with a few semi-joins
uncovered_roots AS (
    SELECT r.* FROM decode_roots AS r
    WHERE r.bootstrap_room IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM kv_events AS k
                      WHERE k.op = 'transfer' AND k.bootstrap_room = r.bootstrap_room)
),
thread_errors AS (
    SELECT s.trace_id, s.parent_span_id AS root_span_id, min(s.end_ns) AS error_ns,
           list(s.span_id ORDER BY s.end_ns, s.span_id) AS error_span_ids
    FROM spans AS s
    SEMI JOIN uncovered_roots AS r ON r.trace_id = s.trace_id AND r.span_id = s.parent_span_id
    WHERE s.status_code = 2
    GROUP BY ALL
),
abort_marks AS (
    SELECT rid, instance_id, min(time_ns) AS abort_ns, list(span_id ORDER BY time_ns, span_id) AS abort_span_ids
    FROM aborts WHERE rid IS NOT NULL
    GROUP BY ALL
),
-- the last stage slice the decode side closed for the request: it was alive until then
last_stages AS (
    SELECT rid, max(end_ns) AS last_stage_ns
    FROM request_stages WHERE name LIKE 'decode\_%' ESCAPE '\' AND rid IS NOT NULL
      AND rid IN (SELECT rid FROM uncovered_roots)
    GROUP BY rid
),
culprits AS (
    SELECT r.*,
           coalesce(a.abort_ns, least(coalesce(l.last_stage_ns, r.end_ns), coalesce(e.error_ns, r.end_ns), r.end_ns))
               AS abort_ns,
           list_concat([r.span_id], coalesce(e.error_span_ids, []), coalesce(a.abort_span_ids, [])) AS evidence
    FROM uncovered_roots AS r
    LEFT JOIN thread_errors AS e ON e.trace_id = r.trace_id AND e.root_span_id = r.span_id
    LEFT JOIN abort_marks AS a ON a.rid = r.rid AND a.instance_id = r.instance_id
    LEFT JOIN last_stages AS l ON l.rid = r.rid
    WHERE lower(r.finish_reason) = 'abort' OR e.error_ns IS NOT NULL OR a.abort_ns IS NOT NULL
),
sessions AS (
    SELECT bootstrap_room, any_value(host_name) AS prefill_host, any_value(instance_id) AS prefill_instance,
           max(end_ns) AS end_raw_ns, arg_max(span_id, end_ns) AS write_span_id,
           'mooncake_worker_send_session' AS write_end_source
    FROM request_stages
    -- mooncake_worker_send too: a write cut short by the abort (SGLang 0.5.23 with the DSA
    -- indexer pool sends it after the KV) leaves the loop before its session slice is written,
    -- and the late end is then only on the enclosing worker send
    WHERE name IN ('mooncake_worker_send_session', 'mooncake_worker_send') AND bootstrap_room IS NOT NULL
      AND bootstrap_room IN (SELECT bootstrap_room FROM culprits)
    GROUP BY bootstrap_room
),
prefill_roots AS (
    SELECT trace_id, span_id, bootstrap_room, host_name, instance_id, end_ns
    FROM requests WHERE role = 'prefill' AND bootstrap_room IS NOT NULL
      AND bootstrap_room IN (SELECT bootstrap_room FROM culprits)
),
-- without mooncake's slices: the prefill side must show the transfer itself, a failed one (its
-- ERROR thread span: "Prefill transfer failed ... KVTransferError(bootstrap_room=...)"; the one
-- attribute read here, on ERROR spans only) or a finished one (prefill_transfer_kv_cache)
prefill_transfers AS (
    SELECT p.bootstrap_room, p.host_name, p.instance_id, greatest(p.end_ns, s.end_ns) AS end_ns, s.span_id
    FROM prefill_roots AS p
    JOIN spans AS s ON s.trace_id = p.trace_id AND s.parent_span_id = p.span_id
    WHERE s.status_code = 2 AND (s.attributes->>'$.reason') ILIKE '%transfer%'
    UNION ALL
    SELECT p.bootstrap_room, p.host_name, p.instance_id, greatest(p.end_ns, g.end_ns) AS end_ns, g.span_id
    FROM prefill_roots AS p
    JOIN request_stages AS g ON g.bootstrap_room = p.bootstrap_room AND g.name = 'prefill_transfer_kv_cache'
),
write_ends AS (
    SELECT * FROM sessions
    UNION ALL BY NAME
    SELECT bootstrap_room, any_value(host_name) AS prefill_host, any_value(instance_id) AS prefill_instance,
           max(end_ns) AS end_raw_ns, arg_max(span_id, end_ns) AS write_span_id,
           'prefill_transfer_end' AS write_end_source
    FROM prefill_transfers AS p
    WHERE NOT EXISTS (SELECT 1 FROM sessions AS s WHERE s.bootstrap_room = p.bootstrap_room)
    GROUP BY bootstrap_room
),
windows AS (
    SELECT c.*, w.prefill_host, w.end_raw_ns, w.write_span_id, w.write_end_source,
           coalesce(w.prefill_host = c.host_name, false) AS same_host,
           b.offset_lo_ns, b.offset_hi_ns, coalesce(b.offset_est_ns, 0) AS offset_est_ns
    FROM culprits AS c
    JOIN write_ends AS w USING (bootstrap_room)
    LEFT JOIN skew_bounds AS b ON b.prefill_host = w.prefill_host AND b.decode_host = c.host_name
    -- instrumented prefill instances are left to the page-level analyses (which see pages)
    WHERE NOT EXISTS (SELECT 1 FROM kv_events AS k WHERE k.emit_instance_id = w.prefill_instance)
),
-- the write's end on the decode clock: offset = prefill clock - decode clock (skew_bounds)
decode_clock AS (
    SELECT *,
           CASE WHEN same_host THEN end_raw_ns ELSE to_decode_clock(end_raw_ns, offset_est_ns) END AS end_est_ns,
           CASE WHEN same_host THEN end_raw_ns ELSE to_decode_clock(end_raw_ns, offset_hi_ns) END AS end_earliest_ns,
           CASE WHEN same_host THEN end_raw_ns ELSE to_decode_clock(end_raw_ns, offset_lo_ns) END AS end_latest_ns
    FROM windows
),
-- still running at the abort for some allowed offset (an unbounded latest end allows it)
in_flight AS (
    SELECT * FROM decode_clock WHERE end_latest_ns IS NULL OR end_latest_ns > abort_ns
),
admissions AS (
    SELECT r.trace_id, r.span_id, r.rid, r.instance_id, coalesce(b.admit_ns, r.start_ns) AS admit_ns
    FROM decode_roots AS r
    LEFT JOIN (SELECT rid, max(end_ns) AS admit_ns FROM request_stages
               WHERE name = 'decode_bootstrap' AND rid IS NOT NULL GROUP BY rid) AS b USING (rid)
    WHERE r.instance_id IN (SELECT instance_id FROM in_flight)
),
pairs AS (
    SELECT f.*, v.rid AS victim, v.span_id AS victim_span_id, v.admit_ns
    FROM in_flight AS f
    LEFT JOIN admissions AS v
      ON v.instance_id = f.instance_id AND v.rid <> f.rid AND v.admit_ns >= f.abort_ns
     AND (f.end_latest_ns IS NULL OR v.admit_ns < f.end_latest_ns)
)
SELECT
    substr(md5(concat_ws('|', 'abort_during_transfer', span_id, coalesce(victim_span_id, ''))), 1, 16) AS finding_id,
    'abort_during_transfer' AS kind,
    instance_id AS instance,
    CAST(NULL AS INTEGER) AS tp_rank,
    CAST(NULL AS VARCHAR) AS kv_pool,
    CAST([] AS INTEGER[]) AS pages,
    CAST([] AS INTEGER[]) AS layers,
    rid AS culprit_rid,
    victim AS victim_rid,
    coalesce(admit_ns, abort_ns) AS window_start_ns,
    greatest(end_est_ns, coalesce(admit_ns, abort_ns)) AS window_end_ns,
    'possible' AS confidence,
    list_concat(evidence, [write_span_id], CASE WHEN victim_span_id IS NULL THEN [] ELSE [victim_span_id] END)
        AS evidence_span_ids,
    end_raw_ns AS window_end_raw_ns,
    end_earliest_ns AS window_end_earliest_ns,
    end_latest_ns AS window_end_latest_ns,
    prefill_host AS culprit_clock_host,
    CASE WHEN same_host THEN NULL ELSE end_raw_ns - coalesce(admit_ns, abort_ns) END AS refute_offset_ns,
    abort_ns,
    write_end_source,
    service_version
FROM pairs
ORDER BY instance, window_start_ns, finding_id
