"""The simulator's neutral span record and the sink protocol its two emitters implement.

The model produces `SpanRecord`s with ids, times (already on the emitting host's clock) and
attributes fixed; `simulator.otlp_sdk` replays them through the opentelemetry-sdk and
`simulator.fastpath` encodes them straight to the same OTLP JSON. Keeping the ids in the record
is what makes the two paths byte-comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

AttrValue = str | int | float | bool | list[int] | list[str]
ResourceAttrs = tuple[tuple[str, str], ...]  # a Resource's attributes in order (hashable)

SPAN_KIND_INTERNAL = 1
STATUS_UNSET = 0
STATUS_ERROR = 2
SCOPE_NAME = "sglang"


@dataclass(frozen=True)
class InstanceInfo:
    """One serving instance on its own host; `offset_ns` = host clock minus true time."""

    instance_id: str
    role: str  # prefill / decode
    host: str
    offset_ns: int

    def resource_attributes(self, version: str, sdk_version: str) -> dict[str, str]:
        return {
            "telemetry.sdk.language": "python",
            "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.version": sdk_version,
            "service.name": f"sglang-{self.role}",
            "service.instance.id": self.instance_id,
            "service.version": version,
            "host.name": self.host,
            "sglang.role": self.role,
        }


@dataclass
class SpanRecord:
    instance: InstanceInfo
    version: str
    trace_id: int
    span_id: int
    parent_id: int | None
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, AttrValue]
    status_code: int = STATUS_UNSET
    status_message: str | None = None
    links: list[tuple[int, int]] = field(default_factory=list)
    # Stock SGLang mode (simulator.stock) only; the defaults are the conventions output.
    resource: ResourceAttrs | None = None  # this span's process Resource; None = instance.resource_attributes
    scope: str = SCOPE_NAME  # instrumentation scope name
    parent_remote: bool = False  # parent span context came from another process (SpanContext.is_remote)
    links_remote: tuple[bool, ...] = ()  # per link: is_remote; empty = all local


class SpanSink(Protocol):
    """Where records go: an OTLP writer, or a counter in labels-only mode."""

    def emit(self, record: SpanRecord) -> None: ...

    def close(self) -> None: ...


class CountingSink:
    """Counts spans per service.version and writes nothing (labels-only / statistics mode)."""

    def __init__(self) -> None:
        self.spans_by_version: dict[str, int] = {}

    def emit(self, record: SpanRecord) -> None:
        self.spans_by_version[record.version] = self.spans_by_version.get(record.version, 0) + 1

    def close(self) -> None:
        return None
