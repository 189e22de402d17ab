"""Coverage before conclusions: a verdict says "No race findings" only where the race analyses
could have seen one, and every cross-host finding says what clock offset would refute it.

Stores are built the way a user builds them: OTLP files (real producers' output, or the
simulator's) through `kvtrace ingest`, then `kvtrace report` / `kvtrace findings`.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from kvtrace.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
FOREIGN = ROOT.parent / "shared" / "data" / "otlp-foreign"


def _kv(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _verdict(traces: Path, db: Path, out: Path) -> str:
    _kv("ingest", str(traces), "--db", str(db))
    return _kv("report", "--db", str(db), "--out", str(out)).splitlines()[0]


def _findings(db: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in _kv("findings", "--db", str(db)).splitlines() if line.strip()]


def _rewrite_spans(src: Path, dst: Path, keep) -> None:  # type: ignore[no-untyped-def]
    """Copy OTLP JSON-lines files, keeping the spans for which keep(span) is true."""
    dst.mkdir()
    for f in src.glob("*.jsonl"):
        lines = []
        for line in f.read_bytes().splitlines():
            doc = orjson.loads(line)
            for rs in doc["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    ss["spans"] = [sp for sp in ss["spans"] if keep(sp)]
            lines.append(orjson.dumps(doc))
        (dst / f.name).write_bytes(b"\n".join(lines) + b"\n")


def test_a_store_without_sglang_spans_gets_no_clean_bill(tmp_path: Path) -> None:
    if not (FOREIGN / "proto_example_trace.json").exists():
        pytest.skip("shared/data/otlp-foreign is absent")
    verdict = _verdict(FOREIGN / "proto_example_trace.json", tmp_path / "s.duckdb", tmp_path / "r")
    assert "No race findings" not in verdict
    assert verdict.startswith("No verdict: the store holds no SGLang request or KV spans")
    assert "--enable-trace" in verdict and "plugin" in verdict
    md = (tmp_path / "r" / "summary.md").read_text()
    assert "No race findings" not in md


def test_simulator_traces_with_every_kv_span_tells_nothing_is_missing(tmp_path: Path) -> None:
    verdict = _verdict(ROOT / "sample_traces" / "pd-abort-race", tmp_path / "s.duckdb", tmp_path / "r")
    assert "abort_before_write_complete" in verdict
    assert "Coverage:" not in verdict


@pytest.fixture(scope="module")
def stock_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The simulator's pd-abort-race in stock-only mode (SGLang's own spans, none of kvtrace's),
    ingested; returns (store, traces folder with labels.json)."""
    work = tmp_path_factory.mktemp("stock")
    _kv("simulate", "--scenario", "pd-abort-race", "--seed", "2", "--stock-only", "--fast", "--out", str(work / "t"))
    _kv("ingest", str(work / "t"), "--db", str(work / "s.duckdb"))
    return work / "s.duckdb", work / "t"


@pytest.mark.slow
def test_stock_spans_only_the_verdict_says_what_could_not_run(stock_run: tuple[Path, Path], tmp_path: Path) -> None:
    db, _ = stock_run
    verdict = _kv("report", "--db", str(db), "--out", str(tmp_path / "r")).splitlines()[0]
    assert "No race findings" not in verdict
    assert "abort_during_transfer findings (request level, no pages seen: possible at best)" in verdict
    assert "abort_before_write_complete and unsafe_free ran at request level only" in verdict
    assert "page_hazard and read_before_load could not run" in verdict
    assert "kvtrace's SGLang plugin" in verdict
    assert "cannot be checked against their outputs" in verdict  # no spec metrics, text or feedback


@pytest.mark.slow
def test_stock_spans_give_every_culprit_and_victim_at_request_level(stock_run: tuple[Path, Path]) -> None:
    """Against the simulator's ground truth: every injected transfer race (abort_before_write_complete
    and unsafe_free) has an abort_during_transfer finding on its decode instance and culprit, and
    every true victim is among the candidates; all are `possible`, none has pages."""
    db, traces = stock_run
    found = _findings(db)
    assert found and {f["kind"] for f in found} == {"abort_during_transfer"}
    assert all(f["confidence"] == "possible" and f["pages"] == [] for f in found)
    labels = json.loads((traces / "labels.json").read_text())
    truth: dict[tuple[str, str], set[str | None]] = {}
    for race in labels["races"]:
        if race["kind"] in ("abort_before_write_complete", "unsafe_free"):
            truth.setdefault((race["instance"], race["culprit_rid"]), set()).add(race["victim_rid"])
    named: dict[tuple[str, str], set[str | None]] = {}
    for f in found:
        named.setdefault((str(f["instance"]), str(f["culprit_rid"])), set()).add(f["victim_rid"])  # type: ignore[arg-type]
    assert set(truth) <= set(named)
    for key, victims in truth.items():
        assert victims - {None} <= named[key], key
    assert all(f["refute_margin"].startswith("holds unless the clock of decode-") for f in found)


def test_kv_spans_removed_the_verdict_says_what_could_not_run(tmp_path: Path) -> None:
    kvtrace_only = {"kv.alloc", "kv.free", "kv.transfer", "request.abort", "hicache.load", "forward", "forward.read"}
    _rewrite_spans(ROOT / "sample_traces" / "clean", tmp_path / "t", lambda sp: sp["name"] not in kvtrace_only)
    verdict = _verdict(tmp_path / "t", tmp_path / "s.duckdb", tmp_path / "r")
    assert "No race findings" not in verdict
    # the clean scenario's decode aborts during transfers are safe (deferred frees), which only page
    # spans can show: at request level they stay possible findings
    assert "abort_during_transfer" in verdict and "possible at best" in verdict
    assert "page_hazard and read_before_load could not run" in verdict


def test_a_cross_host_finding_with_one_sided_clock_evidence_carries_its_margin(tmp_path: Path) -> None:
    """Without decode_bootstrap stages only the lower clock bound exists (transfer end before
    decode_transferred end): every abort finding says what offset refutes it, and that no
    ordering evidence bounds the clocks from that side."""
    _rewrite_spans(ROOT / "sample_traces" / "pr35049", tmp_path / "t", lambda sp: sp["name"] != "decode_bootstrap")
    _kv("ingest", str(tmp_path / "t"), "--db", str(tmp_path / "s.duckdb"))
    found = [f for f in _findings(tmp_path / "s.duckdb") if f["kind"] == "abort_before_write_complete"]
    assert found
    for f in found:
        assert f["window_end_earliest_ns"] is None and f["window_end_latest_ns"] is not None
        assert f["confidence"] == "possible"
        margin = f["refute_offset_ns"]
        assert isinstance(margin, int) and margin == f["window_end_raw_ns"] - f["window_start_ns"]
        assert f["refute_margin"].startswith(f"holds unless the clock of {f['instance']} is more than ")
        assert f["refute_margin"].endswith("(no ordering evidence bounds it from that side)")
    report = _kv("report", "--db", str(tmp_path / "s.duckdb"), "--out", str(tmp_path / "r"))
    assert report
    page = (tmp_path / "r" / "report.html").read_text()
    assert "no ordering evidence bounds it from that side" in page


def test_two_sided_clock_evidence_states_the_bound_it_allows(tmp_path: Path) -> None:
    _kv("ingest", str(ROOT / "sample_traces" / "pr35049"), "--db", str(tmp_path / "s.duckdb"))
    found = [f for f in _findings(tmp_path / "s.duckdb") if f["kind"] == "abort_before_write_complete"]
    assert found
    for f in found:
        allowed = f["window_end_raw_ns"] - f["window_end_earliest_ns"]
        # certain exactly when the evidence rules out every refuting offset
        assert (f["confidence"] == "certain") == (allowed < f["refute_offset_ns"])
        assert "the ordering evidence allows at most" in f["refute_margin"]


@pytest.mark.slow
def test_the_app_says_what_it_could_not_see_and_the_refute_margin(stock_run: tuple[Path, Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    db, _ = stock_run
    _kv("analyze", "--db", str(db))
    monkeypatch.setenv("KVTRACE_DB", str(db))
    entry = str(ROOT / "app" / "streamlit_app.py")
    at = AppTest.from_file(entry, default_timeout=120)
    at.run()
    at.switch_page("views/overview.py").run()
    assert not at.exception
    headline = at.markdown[0].value.replace("\\", "")
    assert "No race findings" not in headline
    assert "Coverage: abort_before_write_complete and unsafe_free ran at request level only" in headline
    coverage = next(d.value for d in at.dataframe if "evidence" in d.value.columns)
    assert not coverage.set_index("evidence").at["page_kv_spans", "present"]
    at = AppTest.from_file(entry, default_timeout=120)
    at.run()
    at.switch_page("views/findings.py").run()
    assert not at.exception
    clocks = [i.value.replace("\\", "") for i in at.info if "Clocks:" in i.value]
    assert clocks and "holds unless the clock of decode-" in clocks[0]
