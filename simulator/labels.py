"""Ground truth: `labels.json` beside the traces (never inside them), and the run's summary.

Format `kvtrace-labels/1`, defined in docs/simulator.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from kvtrace.simulator.model import RunResult

LABELS_FORMAT = "kvtrace-labels/1"
LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class VersionSummary:
    version: str
    requests: int
    spans: int
    aborted: int
    races: int
    incidents: int  # requests made bad by a race (the anomalies)
    garbled: int
    repetition: int

    @property
    def anomalies(self) -> int:
        return self.garbled + self.repetition

    @property
    def rate_per_10k(self) -> float:
        return 10_000 * self.anomalies / self.requests if self.requests else 0.0


def summarize(result: RunResult) -> list[VersionSummary]:
    """One row per service.version, in phase order."""
    rows: list[VersionSummary] = []
    for phase in result.knobs.phases:
        v = phase.version
        reqs = [r for r in result.requests if r.phase.version == v]
        if not reqs:
            continue
        rows.append(VersionSummary(
            version=v,
            requests=len(reqs),
            spans=result.spans_by_version.get(v, 0),
            aborted=sum(r.aborted for r in reqs),
            races=sum(1 for race in result.races if race.service_version == v),
            incidents=sum(1 for r in reqs if r.cause is not None),
            garbled=sum(1 for r in reqs if r.state == "garbled"),
            repetition=sum(1 for r in reqs if r.state == "repetition"),
        ))
    return rows


def labels_document(result: RunResult) -> dict[str, Any]:
    return {
        "format": LABELS_FORMAT,
        "scenario": result.scenario,
        "seed": result.seed,
        "knobs": result.knobs.public_dict(),
        "instances": [
            {"instance": i.instance_id, "role": i.role, "host": i.host, "clock_offset_ns": i.offset_ns}
            for i in result.instances
        ],
        "clock_offsets_ns": {i.host: i.offset_ns for i in result.instances},
        "races": [race.as_dict() for race in result.races],
        "requests": [
            {"rid": r.rid, "bootstrap_room": f"{r.room:016x}", "service_version": r.phase.version,
             "prefill_instance": r.prefill.info.instance_id if r.prefill else None,
             "decode_instance": r.decode.info.instance_id if r.decode else None,
             "prompt_tokens": r.prompt, "aborted": r.aborted, "state": r.state, "cause": r.cause}
            for r in result.requests
        ],
        "summary": [
            {"service_version": s.version, "requests": s.requests, "spans": s.spans, "aborted": s.aborted,
             "races": s.races, "anomalies": s.anomalies, "garbled": s.garbled, "repetition": s.repetition,
             "anomalies_per_10k": round(s.rate_per_10k, 3)}
            for s in summarize(result)
        ],
    }


def write_labels(out_dir: Path, result: RunResult) -> Path:
    path = out_dir / LABELS_FILE
    path.write_bytes(orjson.dumps(labels_document(result), option=orjson.OPT_INDENT_2) + b"\n")
    return path


def read_labels(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(path.read_bytes())
    return doc
