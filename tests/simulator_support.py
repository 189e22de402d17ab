"""Plain helpers for the simulator tests: the small run they share and its spans read back as dicts.
Not a test module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

SMALL: dict[str, Any] = {"requests": 60}  # on top of the `sample` profile (simulator.config.SAMPLE_PROFILE)


def _value(v: dict[str, Any]) -> Any:
    if "intValue" in v:
        return int(v["intValue"])
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    return next(iter(v.values()))


def load_spans(folder: Path) -> list[dict[str, Any]]:
    """Every span of every instance file, flattened: name, times, ids, attrs, resource."""
    spans = []
    for path in sorted(folder.glob("*.otlp.jsonl")):
        for line in path.read_bytes().splitlines():
            for rs in orjson.loads(line)["resourceSpans"]:
                resource = {a["key"]: _value(a["value"]) for a in rs["resource"]["attributes"]}
                for ss in rs["scopeSpans"]:
                    for s in ss["spans"]:
                        spans.append(
                            {
                                "name": s["name"],
                                "trace_id": s["traceId"],
                                "span_id": s["spanId"],
                                "parent": s.get("parentSpanId"),
                                "start": int(s["startTimeUnixNano"]),
                                "end": int(s["endTimeUnixNano"]),
                                "status": s["status"].get("code", 0),
                                "attrs": {a["key"]: _value(a["value"]) for a in s.get("attributes", [])},
                                "resource": resource,
                                "file": path.name,
                            }
                        )
    return spans
