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

from kvtrace.simulator.otlp_sdk import BATCH_SPANS, file_name
from kvtrace.simulator.records import STATUS_ERROR, AttrValue, ResourceAttrs, SpanRecord

_FLAGS = 256  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK: what the SDK encoder sets for local parents
_FLAGS_REMOTE = 768  # ... | SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK: a parent or link from another process


_INT_CACHE: dict[int, str] = {}


def _int(v: int) -> str:
    frag = _INT_CACHE.get(v)
    if frag is None:
        frag = f'{{"intValue":"{v}"}}'
        if 0 <= v < 1 << 20:  # page ids, ranks, token counts: worth keeping
            _INT_CACHE[v] = frag
    return frag


def _value(value: AttrValue) -> str:
    """An AnyValue as protobuf's JSON mapping (then orjson) writes it."""
    if isinstance(value, bool):
        return '{"boolValue":true}' if value else '{"boolValue":false}'
    if isinstance(value, str):
        return '{"stringValue":' + orjson.dumps(value).decode() + "}"
    if isinstance(value, int):
        return _int(value)
    if isinstance(value, float):
        return '{"doubleValue":' + orjson.dumps(value).decode() + "}"
    if not value:
        return '{"arrayValue":{}}'
    if isinstance(value[0], int):
        return '{"arrayValue":{"values":[' + ",".join([_int(v) for v in value]) + "]}}"
    return '{"arrayValue":{"values":[' + ",".join([_value(v) for v in value]) + "]}}"


def _attributes(attrs: dict[str, Any]) -> str:
    return ",".join(['{"key":' + orjson.dumps(k).decode() + ',"value":' + _value(v) + "}" for k, v in attrs.items()])


def encode_span(rec: SpanRecord) -> str:
    """One span as OTLP/JSON text: what MessageToDict + orjson make of the SDK's encoding of it."""
    parts = [f'{{"traceId":"{rec.trace_id:032x}","spanId":"{rec.span_id:016x}"']
    if rec.parent_id is not None:
        parts.append(f',"parentSpanId":"{rec.parent_id:016x}"')
    parts.append(',"name":' + orjson.dumps(rec.name).decode())
    parts.append(f',"kind":1,"startTimeUnixNano":"{rec.start_ns}","endTimeUnixNano":"{rec.end_ns}"')
    if rec.attributes:
        parts.append(',"attributes":[' + _attributes(rec.attributes) + "]")
    if rec.links:
        remote = rec.links_remote or (False,) * len(rec.links)
        parts.append(',"links":[' + ",".join(
            f'{{"traceId":"{t:032x}","spanId":"{s:016x}","flags":{_FLAGS_REMOTE if r else _FLAGS}}}'
            for (t, s), r in zip(rec.links, remote, strict=True)) + "]")
    if rec.status_code == STATUS_ERROR:  # Status fields in proto order: message (2), code (3)
        message = ('"message":' + orjson.dumps(rec.status_message).decode() + ",") if rec.status_message else ""
        parts.append(f',"status":{{{message}"code":{STATUS_ERROR}}}')
    else:
        parts.append(',"status":{}')
    parts.append(f',"flags":{_FLAGS_REMOTE if rec.parent_remote else _FLAGS}}}')
    return "".join(parts)


_ResourceKey = tuple[str, str] | ResourceAttrs


def _resource_key(rec: SpanRecord) -> _ResourceKey:
    """What encode_spans groups a batch by: the Resource (its attributes), then the scope."""
    return rec.resource if rec.resource is not None else (rec.instance.instance_id, rec.version)


class _FastWriter:
    def __init__(self, path: Path) -> None:
        self._fh: BinaryIO = path.open("wb")
        self._batch: list[SpanRecord] = []
        self._resources: dict[_ResourceKey, str] = {}

    def add(self, rec: SpanRecord) -> None:
        self._batch.append(rec)
        if len(self._batch) >= BATCH_SPANS:
            self.flush()

    def _resource_head(self, rec: SpanRecord, key: _ResourceKey) -> str:
        head = self._resources.get(key)
        if head is None:
            attrs = _attributes(dict(rec.resource) if rec.resource is not None
                                else rec.instance.resource_attributes(rec.version, SDK_VERSION))
            head = '{"resource":{"attributes":[' + attrs + ']},"scopeSpans":['
            self._resources[key] = head
        return head

    def flush(self) -> None:
        """One line per batch, spans grouped by resource then scope in first-seen order (as encode_spans)."""
        if not self._batch:
            return
        groups: dict[_ResourceKey, tuple[SpanRecord, dict[str, list[str]]]] = {}
        for rec in self._batch:
            key = _resource_key(rec)
            if key not in groups:
                groups[key] = (rec, {})
            groups[key][1].setdefault(rec.scope, []).append(encode_span(rec))
        self._batch = []
        body = ",".join(
            self._resource_head(first, key) + ",".join(
                '{"scope":{"name":' + orjson.dumps(scope).decode() + '},"spans":[' + ",".join(spans) + "]}"
                for scope, spans in scopes.items()) + "]}"
            for key, (first, scopes) in groups.items())
        self._fh.write(('{"resourceSpans":[' + body + "]}\n").encode())

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
                page_format: str = "ids", **knob_overrides: Any) -> FastStats:
    """Write about `n_spans` spans of `scenario` as OTLP JSON lines, plus labels.json.

    Each phase stops issuing requests once its spans so far plus the expected spans of the
    requests in flight reach its share of n_spans; those then finish, so the count lands within
    about a percent of n_spans (a few hundred spans over or under for small n). Knob overrides (e.g.
    `mean_context=8192`) go to `simulator.config.Knobs`; page_format `ids` (kv.page_ids) or
    `ranges` (kv.page_ranges).
    """
    from kvtrace.simulator.config import SAMPLE_PROFILE, scenario_knobs
    from kvtrace.simulator.labels import write_labels
    from kvtrace.simulator.model import ClusterModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The sample profile's raised race rates (so big inputs hold findings too), on a 4P+4D
    # cluster with 64 sessions and short contexts (spans of about 1 KB).
    defaults: dict[str, Any] = {**SAMPLE_PROFILE, "mean_context": 1024, "max_context": 16_384, "layers": 16,
                                "concurrency": 64, "prefill": 4, "decode": 4, "requests": 10**9}
    defaults.update(knob_overrides)
    knobs = replace(scenario_knobs(scenario), **defaults)
    started = time.perf_counter()
    sink = FastJsonSink(out)
    model = ClusterModel(knobs, seed, sink, scenario, span_budget=n_spans, page_format=page_format)
    result = model.run()
    write_labels(out, result)
    files = sorted(p.name for p in out.glob("*.otlp.jsonl"))
    size = sum((out / f).stat().st_size for f in files)
    return FastStats(sink.count, len(result.requests), len(result.races), size,
                     time.perf_counter() - started, files)
