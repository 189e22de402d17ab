-- stage_targets: SGLang stage slices whose request_stages rows this batch derives: the batch's
-- new ones, plus stored ones still waiting (ingest_pending kind 'stage') for a rid-carrying
-- ancestor in a trace this batch touched. Reads: new_spans, ingest_pending. Returns nothing;
-- fills temp tables stage_targets and stage_pending_now.
CREATE OR REPLACE TEMP TABLE stage_targets AS
SELECT trace_id, span_id, parent_span_id, name, instance_id, host_name, start_ns, end_ns,
       rid, attributes->>'$.bootstrap_room' AS room, false AS was_pending
FROM new_spans
WHERE name IN ('prefill_prepare', 'prefill_bootstrap', 'prefill_waiting', 'prefill_forward',
               'prefill_transfer_kv_cache',
               'decode_prepare', 'decode_bootstrap', 'decode_transferred', 'decode_waiting', 'decode_forward',
               -- mooncake's slices (stock SGLang, --trace-modules mooncake); their root is the
               -- transfer's `Sender Req 0x<room>`, whose rid is the room in hex
               'mooncake_send', 'mooncake_recv', 'mooncake_worker_send', 'mooncake_worker_send_session',
               'mooncake_worker_recv');

CREATE OR REPLACE TEMP TABLE stage_pending_now AS
SELECT p.trace_id, p.span_id
FROM ingest_pending AS p
SEMI JOIN new_spans AS n ON n.trace_id = p.trace_id
WHERE p.kind = 'stage';
