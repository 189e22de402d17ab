"""Evaluation against a simulator's ground truth (labels.json): race findings and the online monitor.

Analyses never read labels; evaluations and tests do (conventions, "Ground truth").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from kvtrace.analytics.errors import LabelsError
from kvtrace.analytics.registry import ParamValue
from kvtrace.analytics.runner import run

RACE_KINDS_EVALUATED = ("abort_before_write_complete", "read_before_load", "unsafe_free", "page_hazard")
REQUEST_LEVEL_KIND = "abort_during_transfer"  # scored on (instance, culprit): it sees no pages


def load_labels(path: Path) -> dict[str, Any]:
    """Parse a labels.json file; raise LabelsError naming the file when it is unusable."""
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise LabelsError(f"{path}: no such labels file") from exc
    except orjson.JSONDecodeError as exc:
        raise LabelsError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(data, dict) or "races" not in data or "requests" not in data:
        raise LabelsError(f"{path}: a labels file needs 'races' and 'requests'")
    return data


def _request_rows(labels: dict[str, Any]) -> list[dict[str, Any]]:
    reqs = labels["requests"]
    if isinstance(reqs, dict):
        return [{"rid": rid, **(v if isinstance(v, dict) else {"state": v})} for rid, v in reqs.items()]
    return list(reqs)


def truth_states(labels: dict[str, Any]) -> pa.Table:
    """rid, state (ok / garbled / repetition), cause, for every request in the labels."""
    rows = _request_rows(labels)
    return pa.table({
        "rid": [str(r["rid"]) for r in rows],
        "state": [str(r.get("state", "ok")) for r in rows],
        "cause": [None if r.get("cause") is None else str(r.get("cause")) for r in rows],
    })


@dataclass(frozen=True)
class RaceScore:
    """Findings against injected races, for one kind (or 'all')."""

    kind: str
    true_races: int
    findings: int
    matched_races: int
    matched_findings: int
    victims_right: int
    certain_contradicted: int

    @property
    def recall(self) -> float:
        return self.matched_races / self.true_races if self.true_races else 1.0

    @property
    def precision(self) -> float:
        return self.matched_findings / self.findings if self.findings else 1.0


def _race_key(r: dict[str, Any]) -> tuple[str, str, int, str, str]:
    return (str(r["kind"]), str(r["instance"]), int(r["tp_rank"]), str(r["kv_pool"]), str(r["culprit_rid"]))


def score_findings(findings: pa.Table, labels: dict[str, Any]) -> list[RaceScore]:
    """Match findings to labelled races on kind, resource and culprit with overlapping pages.

    A finding that matches a race counts for precision; a race matched by any finding counts for
    recall; `victims_right` counts matched races whose victim the finding names (an `unsafe_free`
    near miss has none: both sides null); a `certain` finding that matches no race is one the truth
    contradicts. The simulator labels every kind it injects, near misses (`unsafe_free`) and
    `page_hazard` included, so every kind is scored the same way.
    """
    races = list(labels["races"])
    rows = findings.to_pylist()
    page_rows = [f for f in rows if f["kind"] != REQUEST_LEVEL_KIND]
    scores: list[RaceScore] = []
    for kind in (*RACE_KINDS_EVALUATED, "all"):
        kr = [r for r in races if kind in ("all", r["kind"])]
        kf = [f for f in page_rows if kind in ("all", f["kind"])]
        matched_races = 0
        victims_right = 0
        matched_f: set[int] = set()
        for race in kr:
            hits = [i for i, f in enumerate(kf) if _race_key(f) == _race_key(race)
                    and set(f["pages"] or []) & set(race.get("pages") or [])]
            matched_f.update(hits)
            if hits:
                matched_races += 1
                if any(kf[i]["victim_rid"] == race.get("victim_rid") for i in hits):
                    victims_right += 1
        contradicted = sum(1 for i, f in enumerate(kf) if f["confidence"] == "certain" and i not in matched_f)
        scores.append(RaceScore(kind, len(kr), len(kf), matched_races, len(matched_f), victims_right, contradicted))
    request_level = [f for f in rows if f["kind"] == REQUEST_LEVEL_KIND]
    if request_level:
        scores.append(_score_request_level(request_level, races))
    return scores


def _score_request_level(found: list[dict[str, Any]], races: list[dict[str, Any]]) -> RaceScore:
    """abort_during_transfer against the injected transfer races (abort_before_write_complete and
    unsafe_free), one per (decode instance, culprit): it sees requests, not ranks, pools or pages.
    Each of its findings names one candidate victim; a race's victim is right when one names it."""
    truth: dict[tuple[str, str], set[str | None]] = {}
    for r in races:
        if r["kind"] in ("abort_before_write_complete", "unsafe_free"):
            truth.setdefault((str(r["instance"]), str(r["culprit_rid"])), set()).add(r.get("victim_rid"))
    matched_f = {i for i, f in enumerate(found) if (str(f["instance"]), str(f["culprit_rid"])) in truth}
    matched_races = victims_right = 0
    for key, victims in truth.items():
        hits = [found[i] for i in matched_f if (str(found[i]["instance"]), str(found[i]["culprit_rid"])) == key]
        if hits:
            matched_races += 1
            named = {f["victim_rid"] for f in hits}
            if victims <= named or victims == {None}:
                victims_right += 1
    return RaceScore(REQUEST_LEVEL_KIND, len(truth), len(found), matched_races, len(matched_f), victims_right, 0)


def monitor_sweep(
    con: duckdb.DuckDBPyConnection,
    labels: dict[str, Any],
    low_accept_lengths: tuple[float, ...] = (1.2, 1.3, 1.4, 1.5, 1.6),
    high_accept_rates: tuple[float, ...] = (0.9, 0.93, 0.96, 0.98),
) -> pa.Table:
    """Precision, recall and detection delay (tokens) of the online abort rule, per threshold pair.

    Positives are requests whose true state is not `ok`; the rule fires when spec_step_detector
    fires. Delay is the median number of output tokens generated before it fired, over true
    positives.
    """
    truth = truth_states(labels)
    con.register("_kvtrace_truth", truth)
    out: list[dict[str, ParamValue]] = []
    try:
        for length in low_accept_lengths:
            for rate in high_accept_rates:
                run(con, "spec_step_detector", {"low_accept_length": length, "high_accept_rate": rate})
                row = con.execute("""
                    SELECT count(*) FILTER (WHERE d.fired AND t.state <> 'ok') AS tp,
                           count(*) FILTER (WHERE d.fired AND t.state = 'ok') AS fp,
                           count(*) FILTER (WHERE NOT coalesce(d.fired, false) AND t.state <> 'ok') AS fn,
                           median(d.fire_tokens) FILTER (WHERE d.fired AND t.state <> 'ok') AS delay_tokens
                    FROM _kvtrace_truth t LEFT JOIN temp.main.spec_step_detector d USING (rid)
                """).fetchone()
                tp, fp, fn, delay = row if row else (0, 0, 0, None)
                out.append({
                    "low_accept_length": length, "high_accept_rate": rate, "true_positives": tp,
                    "false_positives": fp, "false_negatives": fn,
                    "precision": tp / (tp + fp) if tp + fp else None,
                    "recall": tp / (tp + fn) if tp + fn else None,
                    "median_delay_tokens": None if delay is None else float(delay),
                })
        run(con, "spec_step_detector")  # leave the default-threshold result in place
    finally:
        con.unregister("_kvtrace_truth")
    return pa.Table.from_pylist(out)
