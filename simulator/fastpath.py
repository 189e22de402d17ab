"""The fast path: the same model, encoded straight to OTLP JSON lines without the SDK.

`FastJsonSink` builds, for each record, exactly the dict that `json_format.MessageToDict` makes
of the SDK's encoded span (field order, typed AnyValues, int64 as strings, hex ids, flags 256),
and groups a batch by resource the way `encode_spans` does, so its files equal the SDK path's
byte for byte (tests/test_simulator_fastpath.py proves it). `write_spans` is what the ingest and
analytics benches call for 1M and 10M spans.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from opentelemetry.sdk.version import __version__ as SDK_VERSION

from simulator.otlp_sdk import BATCH_SPANS, file_name
from simulator.records import SCOPE_NAME, STATUS_ERROR, AttrValue, InstanceInfo, SpanRecord

_FLAGS = 256  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK: what the SDK encoder sets for local parents


def _value(value: AttrValue) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if not value:
        return {"arrayValue": {}}
    return {"arrayValue": {"values": [_value(v) for v in value]}}


def _attributes(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "value": _value(value)} for key, value in attrs.items()]


def encode_span(rec: SpanRecord) -> dict[str, Any]:
    """One span as OTLP/JSON (the dict MessageToDict gives for the SDK's encoding of it)."""
    span: dict[str, Any] = {"traceId": f"{rec.trace_id:032x}", "spanId": f"{rec.span_id:016x}"}
    if rec.parent_id is not None:
        span["parentSpanId"] = f"{rec.parent_id:016x}"
    span["name"] = rec.name
    span["kind"] = 1
    span["startTimeUnixNano"] = str(rec.start_ns)
    span["endTimeUnixNano"] = str(rec.end_ns)
    if rec.attributes:
        span["attributes"] = _attributes(rec.attributes)
    if rec.links:
        span["links"] = [{"traceId": f"{t:032x}", "spanId": f"{s:016x}", "flags": _FLAGS} for t, s in rec.links]
    if rec.status_code == STATUS_ERROR:
        # Status fields in proto order: message (2) before code (3)
        span["status"] = {"message": rec.status_message, "code": STATUS_ERROR} if rec.status_message else {
            "code": STATUS_ERROR}
    else:
        span["status"] = {}
    span["flags"] = _FLAGS
    return span


class _FastWriter:
    def __init__(self, path: Path) -> None:
        self._fh: BinaryIO = path.open("wb")
        self._batch: list[SpanRecord] = []

    def add(self, rec: SpanRecord) -> None:
        self._batch.append(rec)
        if len(self._batch) >= BATCH_SPANS:
            self.flush()

    def flush(self) -> None:
        if not self._batch:
            return
        groups: dict[tuple[str, str], tuple[InstanceInfo, list[dict[str, Any]]]] = {}
        for rec in self._batch:
            key = (rec.instance.instance_id, rec.version)
            if key not in groups:
                groups[key] = (rec.instance, [])
            groups[key][1].append(encode_span(rec))
        self._batch = []
        doc = {"resourceSpans": [
            {"resource": {"attributes": _attributes(inst.resource_attributes(version, SDK_VERSION))},
             "scopeSpans": [{"scope": {"name": SCOPE_NAME}, "spans": spans}]}
            for (_, version), (inst, spans) in groups.items()
        ]}
        self._fh.write(orjson.dumps(doc) + b"\n")

    def close(self) -> None:
        self.flush()
        self._fh.close()


class FastJsonSink:
    """SpanSink writing OTLP JSON lines directly, one file per instance."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._writers: dict[str, _FastWriter] = {}
        self.count = 0

    def emit(self, record: SpanRecord) -> None:
        writer = self._writers.get(record.instance.instance_id)
        if writer is None:
            writer = _FastWriter(self.out_dir / file_name(record.instance.instance_id, "json"))
            self._writers[record.instance.instance_id] = writer
        writer.add(record)
        self.count += 1

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


@dataclass(frozen=True)
class FastStats:
    spans: int
    requests: int
    races: int
    bytes: int
    seconds: float
    files: list[str]


def write_spans(out_dir: str | Path, n_spans: int, seed: int = 0, scenario: str = "mixed",
                **knob_overrides: Any) -> FastStats:
    """Write at least `n_spans` spans of `scenario` (default knobs: short contexts) + labels.json.

    Each phase stops issuing requests once its spans so far plus the expected spans of the
    requests in flight reach its share of n_spans; those then finish, so the count lands within
    about a percent of n_spans (a few hundred spans over or under for small n). Knob overrides (e.g.
    `mean_context=8192`) go to `simulator.config.Knobs`.
    """
    from simulator.config import scenario_knobs
    from simulator.labels import write_labels
    from simulator.model import ClusterModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    defaults: dict[str, Any] = {"mean_context": 1024, "max_context": 16_384, "layers": 16,
                                "concurrency": 64, "requests": 10**9}
    defaults.update(knob_overrides)
    knobs = replace(scenario_knobs(scenario), **defaults)
    started = time.perf_counter()
    sink = FastJsonSink(out)
    model = ClusterModel(knobs, seed, sink, scenario, span_budget=n_spans)
    result = model.run()
    write_labels(out, result)
    files = sorted(p.name for p in out.glob("*.otlp.jsonl"))
    size = sum((out / f).stat().st_size for f in files)
    return FastStats(sink.count, len(result.requests), len(result.races), size,
                     time.perf_counter() - started, files)
