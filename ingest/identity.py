"""Which serving instance a span came from, when the operator did not say.

kvtrace groups spans by `service.instance.id` (one serving instance) and `host.name` (one clock
domain). SGLang sets neither: operators set them with the standard
`OTEL_RESOURCE_ATTRIBUTES=host.name=...,service.instance.id=...,sglang.role=...,service.version=...`.
When they don't, the opentelemetry-sdk (>= 1.3x) puts a random UUID v4 in `service.instance.id`
of every process, so one SGLang server (a tokenizer process and a scheduler per TP rank) would
read as many instances, none with a host.

The fallback: a resource whose `service.instance.id` is a UUID v4 and that carries no
`host.name` is taken to be unconfigured, and its spans get the instance `service.name` (SGLang's
`--otlp-service-name`, OTEL_SERVICE_NAME, or "sglang"), one per server as far as the operator
named servers. The resource's own attributes, the random id included, are stored unchanged in
`resources.attributes`; the coverage verdict says when this fallback was used and how to set the
attributes (analytics/sql/coverage.sql).
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

# What opentelemetry-sdk's service.instance.id detector writes: str(uuid.uuid4())
SDK_RANDOM_INSTANCE_ID: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
FALLBACK_INSTANCE: Final = "unknown_service"


def with_instance_fallback(spans: pa.Table) -> pa.Table:
    """`spans` (decode.SPAN_SCHEMA: instance_id, host_name, service_name columns) with the
    instance of unconfigured resources replaced by their service.name. The pattern is matched
    on the distinct instance ids only (a handful per batch)."""
    if not spans.num_rows or "instance_id" not in spans.column_names:
        return spans
    instance = spans.column("instance_id").combine_chunks()
    encoded = pc.dictionary_encode(instance)
    random_values = pc.match_substring_regex(encoded.dictionary, SDK_RANDOM_INSTANCE_ID)
    if not pc.any(random_values).as_py():
        return spans
    random_id = pc.fill_null(pc.take(random_values, encoded.indices), False)
    unconfigured = pc.and_kleene(random_id, pc.is_null(spans.column("host_name")))
    service = pc.coalesce(spans.column("service_name"), pa.scalar(FALLBACK_INSTANCE))
    fixed = pc.if_else(unconfigured, service, instance)
    return spans.set_column(spans.schema.get_field_index("instance_id"), "instance_id", fixed)
