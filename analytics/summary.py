"""The verdict a person can act on, built from computed results (never hard-coded)."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from kvtrace.analytics.coverage import Coverage, read_coverage
from kvtrace.analytics.findings import KINDS


@dataclass(frozen=True)
class VersionRate:
    """Anomaly rate of one service.version."""

    version: str
    requests: int
    anomalies: int
    per_10k: float


@dataclass(frozen=True)
class Summary:
    """Headline numbers of a store, and the verdict sentence made from them."""

    findings_by_kind: dict[str, int]
    certain_by_kind: dict[str, int]
    anomalies: int
    explained: int
    requests: int
    rates: list[VersionRate]
    verdict: str
    coverage: Coverage


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _kind_clause(con: duckdb.DuckDBPyConnection, kind: str, count: int) -> str:
    instances = [r[0] for r in con.execute(
        "SELECT instance FROM temp.main.findings WHERE kind = ? GROUP BY instance ORDER BY count(*) DESC, instance",
        [kind]).fetchall()]
    shown = instances[:4] + ([f"{len(instances) - 4} more"] if len(instances) > 4 else [])
    versions = con.execute(
        "SELECT coalesce(service_version, 'unknown'), count(*) FROM temp.main.findings WHERE kind = ? "
        "GROUP BY ALL ORDER BY count(*) DESC", [kind]).fetchall()
    if len(versions) == 1:
        where = f"all in version {versions[0][0]}"
    else:
        where = "in versions " + _join([f"{v} ({n})" for v, n in versions])
    plural = "finding" if count == 1 else "findings"
    level = " (request level, no pages seen: possible at best)" if kind == "abort_during_transfer" else ""
    return f"{count} {kind} {plural}{level} on {_join([str(i) for i in shown])}, {where}"


def summarise(con: duckdb.DuckDBPyConnection) -> Summary:
    """Read the computed tables on `con` (runner.compute first) and build the verdict."""
    by_kind = dict(con.execute("SELECT kind, count(*) FROM temp.main.findings GROUP BY kind").fetchall())
    certain = dict(con.execute(
        "SELECT kind, count(*) FROM temp.main.findings WHERE confidence = 'certain' GROUP BY kind").fetchall())
    anomalies, explained = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE explained) FROM temp.main.anomaly_linkage").fetchone() or (0, 0)
    kinds_of_bad = dict(con.execute(
        "SELECT anomaly, count(*) FROM temp.main.anomaly_linkage GROUP BY anomaly").fetchall())
    requests_row = con.execute("SELECT count(*) FROM temp.main.request_anomalies").fetchone()
    requests = int(requests_row[0]) if requests_row else 0
    rates = [VersionRate(str(v), int(r), int(a), float(p)) for v, r, a, p in con.execute(
        "SELECT service_version, requests, anomalies, per_10k FROM temp.main.anomaly_rate_by_version").fetchall()]

    coverage = read_coverage(con)
    race_kinds = [k for k in KINDS if k != "unsafe_free"]
    clauses = [_kind_clause(con, k, by_kind[k]) for k in race_kinds if by_kind.get(k)]
    bad_words = _join([f"{n} {k}" for k, n in sorted(kinds_of_bad.items())]) or "no"
    if clauses and not coverage.anomalies_detectable:
        named = con.execute("SELECT count(DISTINCT victim_rid) FROM temp.main.findings WHERE kind <> 'unsafe_free'"
                            ).fetchall()
        sentence = (f"{'; '.join(clauses)}; their {int(named[0][0]) if named else 0} (candidate) victims cannot be "
                    "checked against their outputs")
    elif clauses:
        victims = "their victims are" if sum(by_kind.get(k, 0) for k in race_kinds) > 1 else "its victim is"
        sentence = f"{'; '.join(clauses)}; {victims} {explained} of the {anomalies} anomalous outputs ({bad_words})"
    elif not coverage.anything_to_judge:
        sentence = "No verdict: the store holds no SGLang request or KV spans, so nothing in it could show a race"
    elif coverage.race_analyses_complete:
        sentence = f"No race findings; {anomalies} anomalous outputs ({bad_words}) are unexplained leads"
    else:
        ran = [a.name for a in coverage.analyses if a.status == "ran"]
        looked = f"no findings from {_join(ran)}" if ran else "no findings"
        sentence = (f"No verdict on races: {looked}, but not every race analysis could run (below); "
                    f"{anomalies} anomalous outputs ({bad_words}) are unexplained leads")
    if by_kind.get("unsafe_free"):
        sentence += f"; {by_kind['unsafe_free']} unsafe frees were near misses"
    if rates and coverage.anomalies_detectable:
        parts = [f"{r.per_10k:.1f} per 10k in {r.version}" for r in rates]
        sentence += "; anomaly rate " + _join(parts) if len(parts) > 1 else f"; anomaly rate {parts[0]}"
    elif coverage.anything_to_judge and not coverage.anomalies_detectable and not clauses:
        sentence += ("; anomalous outputs cannot be detected here (no speculative metrics, output text or "
                     "feedback)")
    verdict = sentence + "."
    statement = coverage.statement()
    if statement:
        verdict += " " + statement
    return Summary(by_kind, certain, int(anomalies), int(explained), requests, rates, verdict, coverage)
