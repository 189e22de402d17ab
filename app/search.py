"""One search box for the app: a rid, a rid prefix, a trace id, a bootstrap room, a finding id or
an incident id resolves to the entity it names, and to that entity's URL.

URL formats (query parameters of the page; each survives a new session):

    requests?rid=<rid>               one request's view (span tree, detail panel)
    requests?trace=<trace id>        the request whose root spans are in that trace (16 or 32 hex)
    findings?incident=<incident id>  an incident
    findings?finding=<finding id>    a finding (its incident opens around it)
    sql?sql=<query text>             the SQL console with that query
    <any page>?q=<text>              the search box filled in, its matches listed

Only small tables are read (requests: one row per root span; findings; incidents), by equality or
prefix on a column: never `spans`. Execution core: no streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvtrace.app.data.requests import normalise_trace_id
from kvtrace.app.store import Store

REQUESTS_PAGE = "views/requests.py"
FINDINGS_PAGE = "views/findings.py"


@dataclass(frozen=True)
class Hit:
    """One entity a search text names: what it is, how the text matched, and where it opens."""

    kind: str  # request / finding / incident
    id: str
    how: str  # rid / rid prefix / trace id / bootstrap room / finding id / incident id
    page: str
    params: tuple[tuple[str, str], ...]

    @property
    def query_params(self) -> dict[str, str]:
        return dict(self.params)

    @property
    def url(self) -> str:
        """The path and query of this entity, relative to the app's root."""
        from urllib.parse import urlencode

        return self.page.removeprefix("views/").removesuffix(".py") + "?" + urlencode(self.params)


def resolve(store: Store, text: str, limit: int = 20) -> list[Hit]:
    """Every entity `text` names: exact ids first (incident, finding, request by rid, trace id or
    bootstrap room), then requests whose rid starts with it (only when no rid equals it). At most
    `limit` hits; case-insensitive."""
    t = text.strip()
    if not t:
        return []
    hits: list[Hit] = []
    if store.has_table("incidents"):
        for i in store.frame(
            "SELECT incident_id FROM incidents WHERE lower(incident_id) = lower($t) LIMIT 5", {"t": t}
        )["incident_id"]:
            hits.append(Hit("incident", str(i), "incident id", FINDINGS_PAGE, (("incident", str(i)),)))
    if store.has_table("findings"):
        for f in store.frame(
            "SELECT finding_id FROM findings WHERE lower(finding_id) = lower($t) LIMIT 5", {"t": t}
        )["finding_id"]:
            hits.append(Hit("finding", str(f), "finding id", FINDINGS_PAGE, (("finding", str(f)),)))
    if store.has_table("requests"):
        frame = store.frame(
            """
            WITH exact AS (
                SELECT rid, 'rid' AS how, 0 AS o FROM requests WHERE lower(rid) = lower($t)
                UNION SELECT rid, 'trace id', 1 FROM requests WHERE trace_id = $trace
                UNION SELECT rid, 'bootstrap room', 2 FROM requests WHERE lower(bootstrap_room) = lower($t)
            ),
            prefix AS (
                SELECT DISTINCT rid, 'rid prefix' AS how, 3 AS o FROM requests
                WHERE starts_with(lower(rid), lower($t)) AND NOT EXISTS (SELECT 1 FROM exact WHERE how = 'rid')
                ORDER BY rid LIMIT $limit
            )
            SELECT rid, min_by(how, o) AS how, min(o) AS o FROM (SELECT * FROM exact UNION ALL SELECT * FROM prefix)
            GROUP BY rid ORDER BY o, rid LIMIT $limit
            """,
            {"t": t, "trace": normalise_trace_id(t), "limit": limit},
        )
        for r in frame.iter_rows(named=True):
            hits.append(
                Hit("request", str(r["rid"]), str(r["how"]), REQUESTS_PAGE, (("rid", str(r["rid"])),))
            )
    return hits[:limit]


def describe(hit: Hit) -> str:
    """A hit as one line of plain text (the caller escapes it for Markdown)."""
    return f"{hit.kind} {hit.id} (by {hit.how})"
