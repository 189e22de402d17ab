"""The verdict a person can act on, built from computed results (never hard-coded)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
class KindIncidents:
    """The incidents of one kind: how many, their victims, and the findings they group."""

    kind: str
    incidents: int
    victims: int
    findings: int
    certain: int


@dataclass(frozen=True)
class Summary:
    """Headline numbers of a store, and the verdict sentence made from them.

    Incidents (one culprit action and its victims over every TP rank and KV pool) are the unit of
    the verdict; findings (one per rank, pool and victim) stay the unit of the evidence.
    """

    findings_by_kind: dict[str, int]
    certain_by_kind: dict[str, int]
    anomalies: int
    explained: int
    requests: int
    rates: list[VersionRate]
    verdict: str
    coverage: Coverage
    incidents_by_kind: dict[str, KindIncidents] = field(default_factory=dict)

    @property
    def incidents(self) -> int:
        """Incidents of every kind (near misses, `unsafe_free`, included)."""
        return sum(k.incidents for k in self.incidents_by_kind.values())


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


_REQUEST_LEVEL = " (request level, no pages seen: possible at best)"


def _where(con: duckdb.DuckDBPyConnection, kind: str) -> str:
    """'on decode-0 and decode-1, all in version X' for the incidents of `kind`."""
    instances = [r[0] for r in con.execute(
        "SELECT instance FROM temp.main.incidents WHERE kind = ? GROUP BY instance ORDER BY count(*) DESC, instance",
        [kind]).fetchall()]
    shown = instances[:4] + ([f"{len(instances) - 4} more"] if len(instances) > 4 else [])
    versions = con.execute(
        "SELECT coalesce(service_version, 'unknown'), count(*) FROM temp.main.incidents WHERE kind = ? "
        "GROUP BY ALL ORDER BY count(*) DESC, 1", [kind]).fetchall()
    if len(versions) == 1:
        where = f"all in version {versions[0][0]}"
    else:
        where = "in versions " + _join([f"{v} ({n})" for v, n in versions])
    return f"on {_join([str(i) for i in shown])}, {where}"


def _kind_clause(con: duckdb.DuckDBPyConnection, k: KindIncidents) -> str:
    if k.kind == "abort_during_transfer":
        victims = f"{k.victims} candidate victim{'' if k.victims == 1 else 's'}"
    else:
        victims = f"{k.victims} victim{'' if k.victims == 1 else 's'}"
    return f"{k.incidents} {k.kind} ({victims}) {_where(con, k.kind)}"


def _findings_clause(con: duckdb.DuckDBPyConnection, kinds: list[str]) -> str:
    """'20 findings across ranks, pools and victims (12 abort_before_write_complete, 8 read_before_load)'."""
    counts = con.execute(
        "SELECT f.kind, count(*) FROM temp.main.findings AS f JOIN temp.main.finding_incidents AS i USING (finding_id) "
        "WHERE list_contains(?, i.incident_kind) GROUP BY f.kind", [kinds]).fetchall()
    by_kind = {str(k): int(n) for k, n in counts}
    ordered = [(k, by_kind[k]) for k in KINDS if k in by_kind]
    total = sum(n for _, n in ordered)
    plural = "finding" if total == 1 else "findings"
    if len(ordered) == 1:
        kind = ordered[0][0]
        level = _REQUEST_LEVEL if kind == "abort_during_transfer" else ""
        return f"{total} {kind} {plural}{level} across ranks, pools and victims"
    parts = [f"{n} {k}{_REQUEST_LEVEL if k == 'abort_during_transfer' else ''}" for k, n in ordered]
    return f"{total} {plural} across ranks, pools and victims ({', '.join(parts)})"


def _incidents_by_kind(con: duckdb.DuckDBPyConnection) -> dict[str, KindIncidents]:
    victims = dict(con.execute(
        "SELECT kind, count(DISTINCT v) FROM (SELECT kind, unnest(victim_rids) AS v FROM temp.main.incidents) "
        "GROUP BY kind").fetchall())
    rows = con.execute(
        "SELECT kind, count(*), sum(n_findings), count(*) FILTER (WHERE confidence = 'certain') "
        "FROM temp.main.incidents GROUP BY kind").fetchall()
    return {str(k): KindIncidents(str(k), int(n), int(victims.get(k, 0)), int(f), int(c)) for k, n, f, c in rows}


def summarise(con: duckdb.DuckDBPyConnection) -> Summary:
    """Read the computed tables on `con` (runner.compute first) and build the verdict."""
    by_kind = dict(con.execute("SELECT kind, count(*) FROM temp.main.findings GROUP BY kind").fetchall())
    certain = dict(con.execute(
        "SELECT kind, count(*) FROM temp.main.findings WHERE confidence = 'certain' GROUP BY kind").fetchall())
    incidents = _incidents_by_kind(con)
    anomalies, explained = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE explained) FROM temp.main.anomaly_linkage").fetchone() or (0, 0)
    kinds_of_bad = dict(con.execute(
        "SELECT anomaly, count(*) FROM temp.main.anomaly_linkage GROUP BY anomaly").fetchall())
    requests_row = con.execute("SELECT count(*) FROM temp.main.request_anomalies").fetchone()
    requests = int(requests_row[0]) if requests_row else 0
    rates = [VersionRate(str(v), int(r), int(a), float(p)) for v, r, a, p in con.execute(
        "SELECT service_version, requests, anomalies, per_10k FROM temp.main.anomaly_rate_by_version").fetchall()]

    coverage = read_coverage(con)
    race_kinds: list[str] = [k for k in KINDS if k != "unsafe_free" and k in incidents]
    clauses = [_kind_clause(con, incidents[k]) for k in race_kinds]
    bad_words = _join([f"{n} {k}" for k, n in sorted(kinds_of_bad.items())]) or "no"
    if clauses:
        n_incidents = sum(incidents[k].incidents for k in race_kinds)
        head = f"{n_incidents} {'incident' if n_incidents == 1 else 'incidents'}: {'; '.join(clauses)}"
        if sum(incidents[k].findings for k in race_kinds) > n_incidents:  # else one finding each: nothing to add
            head += f"; {_findings_clause(con, race_kinds)}"
    if clauses and not coverage.anomalies_detectable:
        named = con.execute("SELECT count(DISTINCT victim_rid) FROM temp.main.findings WHERE kind <> 'unsafe_free'"
                            ).fetchall()
        sentence = (f"{head}; their {int(named[0][0]) if named else 0} (candidate) victims cannot be "
                    "checked against their outputs")
    elif clauses:
        many = sum(incidents[k].victims for k in race_kinds) > 1
        victims = "their victims are" if many else "its victim is"
        sentence = f"{head}; {victims} {explained} of the {anomalies} anomalous outputs ({bad_words})"
    elif not coverage.anything_to_judge:
        sentence = "No verdict: the store holds no SGLang request or KV spans, so nothing in it could show a race"
    elif coverage.race_analyses_complete:
        sentence = f"No race findings; {anomalies} anomalous outputs ({bad_words}) are unexplained leads"
    else:
        ran = [a.name for a in coverage.analyses if a.status == "ran"]
        looked = f"no findings from {_join(ran)}" if ran else "no findings"
        sentence = (f"No verdict on races: {looked}, but not every race analysis could run (below); "
                    f"{anomalies} anomalous outputs ({bad_words}) are unexplained leads")
    near = incidents.get("unsafe_free")
    if near is not None:
        frees = "unsafe free was a near miss" if near.incidents == 1 else "unsafe frees were near misses"
        sentence += (f"; {near.incidents} {frees} ({near.findings} unsafe_free "
                     f"{'finding' if near.findings == 1 else 'findings'}, no other request got the pages)")
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
    return Summary(by_kind, certain, int(anomalies), int(explained), requests, rates, verdict, coverage, incidents)
