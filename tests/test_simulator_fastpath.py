"""The fast path writes the same OTLP JSON as the SDK path, and write_spans delivers what benches ask."""

from __future__ import annotations

from pathlib import Path

import orjson
from simulator_support import SMALL, load_spans

from kvtrace.simulator.fastpath import write_spans
from kvtrace.simulator.runner import simulate


def test_fast_path_equals_the_sdk_path_byte_for_byte(tmp_path: Path) -> None:
    knobs = {**SMALL, "requests": 40}
    simulate("mixed", 5, tmp_path / "sdk", knobs, mode="sdk", profile="sample")
    simulate("mixed", 5, tmp_path / "fast", knobs, mode="fast", profile="sample")
    names = sorted(p.name for p in (tmp_path / "sdk").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "fast").iterdir())
    for name in names:
        assert (tmp_path / "sdk" / name).read_bytes() == (tmp_path / "fast" / name).read_bytes(), name
    # and, independently of bytes, the same spans, attributes and resources after parsing
    key = lambda s: s["span_id"]  # noqa: E731
    assert sorted(load_spans(tmp_path / "sdk"), key=key) == sorted(load_spans(tmp_path / "fast"), key=key)


def test_write_spans_writes_at_least_the_asked_spans_with_labels(tmp_path: Path) -> None:
    stats = write_spans(tmp_path, 5000, seed=1)
    spans = load_spans(tmp_path)
    assert len(spans) == stats.spans and abs(stats.spans - 5000) < 5000 * 0.15
    labels = orjson.loads((tmp_path / "labels.json").read_bytes())
    assert sum(row["spans"] for row in labels["summary"]) == stats.spans
    assert {s["resource"]["service.version"] for s in spans} == {"before-fix", "after-fix-1", "after-both"}
    assert stats.files == sorted(p.name for p in tmp_path.glob("*.otlp.jsonl"))
