"""What the store lets the analyses see, in words: every verdict starts from here.

`coverage.sql` counts each kind of evidence; this module says which analyses that evidence lets
run (fully, at request level only, or not at all) and how a user gets what is missing. A store
without page-level KV spans must never read as "no races": the analyses that would have found
them did not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import duckdb

Status = Literal["ran", "request_level", "not_run"]

PLUGIN_HINT: Final = (
    "kvtrace's SGLang plugin (kvtrace[sglang], SGLANG_PLUGINS=kvtrace on every server) "
    "or instrumentation that follows docs/conventions.md"
)

# evidence key -> (what it is, how to get it)
EVIDENCE: Final[dict[str, tuple[str, str]]] = {
    "request_spans": ("request spans", "start SGLang with --enable-trace --otlp-traces-endpoint HOST:4317"),
    "page_kv_spans": ("page-level KV spans (kv.alloc, kv.free, kv.transfer)", PLUGIN_HINT),
    "transfer_timing": ("transfer end times (kv.transfer, or mooncake_worker_send_session)",
                        "add --trace-modules request,mooncake to SGLang's flags"),
    "layer_loads": ("per-layer HiCache loads (hicache.load)", PLUGIN_HINT),
    "layer_reads": ("per-layer reads (forward.read)", PLUGIN_HINT),
    "ordering_pairs": ("ordering pairs for cross-host clock bounds",
                       "trace both sides of each PD pair (decode_bootstrap / decode_transferred with transfer end times)"),
    "spec_metrics": ("speculative-decoding metrics (spec.*)", PLUGIN_HINT),
    "output_text": ("output text (gen_ai.completion)", "the plugin's output-text option (off by default)"),
    "feedback": ("user feedback spans", "record user reports as `feedback` spans (docs/conventions.md)"),
    "resource_identity": ("instance and host identity",
                          "set OTEL_RESOURCE_ATTRIBUTES=host.name=...,service.instance.id=...,sglang.role=...,"
                          "service.version=... on every server"),
}

# analysis -> the evidence it needs (all of), and the request-level stand-in when it lacks them
NEEDS: Final[dict[str, tuple[tuple[str, ...], str | None]]] = {
    "abort_before_write_complete": (("page_kv_spans",), "abort_during_transfer"),
    "unsafe_free": (("page_kv_spans",), "abort_during_transfer"),
    "page_hazard": (("page_kv_spans",), None),
    # forward.read spans without any hicache.load: nothing was loaded, so no load could be raced
    "read_before_load": (("layer_reads",), None),
    "abort_during_transfer": (("request_spans",), None),
}
ANOMALY_EVIDENCE: Final = ("spec_metrics", "output_text", "feedback")


@dataclass(frozen=True)
class Evidence:
    key: str
    label: str
    n: int
    present: bool
    n_missing: int
    how_to_get: str


@dataclass(frozen=True)
class AnalysisCoverage:
    name: str
    status: Status
    missing: tuple[str, ...]   # evidence keys


@dataclass(frozen=True)
class Coverage:
    evidence: dict[str, Evidence]
    analyses: tuple[AnalysisCoverage, ...]

    def has(self, key: str) -> bool:
        return self.evidence[key].present

    @property
    def anything_to_judge(self) -> bool:
        return self.has("request_spans") or self.has("page_kv_spans")

    @property
    def race_analyses_complete(self) -> bool:
        """Every race analysis ran on page-level evidence: only then may a verdict say "no races"."""
        return all(a.status == "ran" for a in self.analyses)

    @property
    def anomalies_detectable(self) -> bool:
        return any(self.has(k) for k in ANOMALY_EVIDENCE)

    def missing(self) -> list[Evidence]:
        """Evidence that would let more run, in EVIDENCE order (resource identity when partial)."""
        out = [e for k, e in self.evidence.items() if not e.present and k not in ("feedback", "output_text")]
        if self.evidence["resource_identity"].n_missing:
            out = [e for e in out if e.key != "resource_identity"] + [self.evidence["resource_identity"]]
        return out

    def statement(self) -> str:
        """One paragraph: what could not be seen, what therefore did not run, how to get it.
        Empty when everything the race analyses need is present."""
        if not self.anything_to_judge:
            return f"Coverage: to get request spans, {EVIDENCE['request_spans'][1]}; for page-level ones, {PLUGIN_HINT}."
        parts: list[str] = []
        not_run = [a.name for a in self.analyses if a.status == "not_run"]
        request_level = [a.name for a in self.analyses if a.status == "request_level"]
        if request_level:
            parts.append(f"{_join(request_level)} ran at request level only (as abort_during_transfer, "
                         "no pages: findings are possible at best)")
        if not_run:
            parts.append(f"{_join(not_run)} could not run")
        by_hint: dict[str, list[str]] = {}
        for e in self.missing():
            if e.key != "resource_identity":
                by_hint.setdefault(e.how_to_get, []).append(e.label)
        for hint, labels in by_hint.items():
            parts.append(f"no {_join(labels)} in the store (to get them: {hint})")
        ident = self.evidence["resource_identity"]
        if ident.n_missing:
            parts.append(f"{ident.n_missing} resource(s) carry only the SDK's random service.instance.id and no "
                         f"host.name, so their instance is their service.name and their clock domain unknown: "
                         f"{ident.how_to_get}")
        return ("Coverage: " + "; ".join(parts) + ".") if parts else ""


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def coverage_from_counts(counts: dict[str, tuple[int, int]]) -> Coverage:
    """Coverage from coverage.sql's rows: evidence key -> (n, n_missing)."""
    evidence = {
        key: Evidence(key, label, counts.get(key, (0, 0))[0], counts.get(key, (0, 0))[0] > 0,
                      counts.get(key, (0, 0))[1], how)
        for key, (label, how) in EVIDENCE.items()
    }
    analyses: list[AnalysisCoverage] = []
    for name, (needs, stand_in) in NEEDS.items():
        missing = tuple(k for k in needs if not evidence[k].present)
        if not missing:
            status: Status = "ran"
        elif stand_in is not None and evidence["request_spans"].present:
            status = "request_level"
        else:
            status = "not_run"
        analyses.append(AnalysisCoverage(name, status, missing))
    return Coverage(evidence, tuple(analyses))


def read_coverage(con: duckdb.DuckDBPyConnection) -> Coverage:
    """Coverage of the analyses computed on `con` (runner.compute first: reads temp table coverage)."""
    rows = con.execute("SELECT evidence, n, n_missing FROM temp.main.coverage").fetchall()
    return coverage_from_counts({str(k): (int(n), int(m)) for k, n, m in rows})
