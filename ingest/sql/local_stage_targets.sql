-- local_stage_targets: the batch's SGLang stage slices (each gets a request_stages row once the
-- walk up its parents finds its rid and bootstrap_room: stage_walk.sql). Span-local (see
-- derive_kv_events.sql for how these files run). Reads: new_spans. Gives: batch_stage_targets
-- (the columns of stage_targets but was_pending).
SELECT trace_id, span_id, parent_span_id, name, instance_id, host_name, start_ns, end_ns,
       rid, attributes->>'$.bootstrap_room' AS room
FROM new_spans
WHERE name IN ('prefill_prepare', 'prefill_bootstrap', 'prefill_waiting', 'prefill_forward',
               'prefill_transfer_kv_cache',
               'decode_prepare', 'decode_bootstrap', 'decode_transferred', 'decode_waiting', 'decode_forward',
               -- mooncake's slices (stock SGLang, --trace-modules mooncake); their root is the
               -- transfer's `Sender Req 0x<room>`, whose rid is the room in hex
               'mooncake_send', 'mooncake_recv', 'mooncake_worker_send', 'mooncake_worker_send_session',
               'mooncake_worker_recv')
