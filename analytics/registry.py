"""The registry of SQL analyses: one `.sql` file per analysis in `analytics/sql/`, validated at load.

Each file opens with a header of `-- key: value` comment lines (aiosql/dbt habit):

    -- analysis: skew_bounds                       (must equal the file name)
    -- description: one line for `kvtrace analyses`
    -- returns: what one row is, and its columns
    -- param: max_skew_ns BIGINT = 50000000  what it means   (zero or more; used as $max_skew_ns)
    -- requires: kv_ownership, skew_bounds       (analyses whose results this one reads by name)
    -- materialise: view                          (optional; default table, see below)

and continues with one SELECT, written as a chain of CTEs. An analysis reads the store's
normalised tables (ingest/schema.sql) and, by name, the results of the analyses it requires:
the runner materialises those first as temporary tables named after them. An intermediate step
that its readers only filter and join (dbt's "ephemeral") says `-- materialise: view`: it becomes a
temporary view instead, so DuckDB plans it inside each reader's query, with the reader's filters
pushed into it, and nothing is written (a view takes no parameters: it is planned with no values).

Loading checks the header, that every `$param` used is declared and every declared one used,
that requirements exist and form no cycle, and finally binds every query against an empty store
built from the schema contract, so a typo fails at start-up with the file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Final

import duckdb

from kvtrace.analytics.errors import AnalysisDefinitionError, UnknownAnalysisError

SQL_DIR: Final = Path(__file__).resolve().parent / "sql"
MACROS_SQL: Final = Path(__file__).resolve().parent / "macros.sql"
STORE_SCHEMA_SQL: Final = Path(__file__).resolve().parents[1] / "ingest" / "schema.sql"

ParamValue = int | float | str | None

_HEADER_KEYS: Final = {"analysis", "description", "returns", "param", "requires", "materialise"}
_MATERIALISE: Final = ("table", "view")
_HEADER_LINE: Final = re.compile(r"^--\s*([a-z_]+):\s*(.*)$")
_PARAM_DECL: Final = re.compile(r"^([a-z_][a-z0-9_]*)\s+([A-Z]+(?:\[\])?)\s*=\s*(\S+)\s*(.*)$")
_PARAM_USE: Final = re.compile(r"\$([a-z_][a-z0-9_]*)")
_LINE_IN_ERROR: Final = re.compile(r"LINE (\d+):")


@dataclass(frozen=True)
class Param:
    """A named parameter of an analysis, used in its SQL as `$name`."""

    name: str
    sql_type: str
    default: ParamValue
    description: str


@dataclass(frozen=True)
class Analysis:
    """One validated `.sql` file."""

    name: str
    description: str
    returns: str
    params: tuple[Param, ...]
    requires: tuple[str, ...]
    sql: str
    path: Path
    header_lines: int = field(default=0)
    materialise: str = field(default="table")

    def bind(self, overrides: dict[str, ParamValue] | None = None) -> dict[str, ParamValue]:
        """The parameter values for one run: declared defaults, then `overrides` (names checked)."""
        values: dict[str, ParamValue] = {p.name: p.default for p in self.params}
        for key, value in (overrides or {}).items():
            if key in values:
                values[key] = value
        return values


def _parse_default(text: str, where: str) -> ParamValue:
    if text.upper() == "NULL":
        return None
    if text.startswith("'") and text.endswith("'") and len(text) >= 2:
        return text[1:-1]
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError as exc:
        raise AnalysisDefinitionError(f"{where}: default {text!r} is not a number, 'string' or NULL") from exc


def parse_analysis(path: Path) -> Analysis:
    """Parse and statically check one file (header, parameters); SQL binding is checked later."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    header: dict[str, list[str]] = {}
    params: list[Param] = []
    last_key: str | None = None
    n_header = 0
    for lineno, line in enumerate(lines, start=1):
        if not line.startswith("--"):
            break
        n_header = lineno
        match = _HEADER_LINE.match(line)
        if match and match.group(1) in _HEADER_KEYS:
            key, value = match.group(1), match.group(2).strip()
            last_key = key
            if key == "param":
                decl = _PARAM_DECL.match(value)
                if not decl:
                    raise AnalysisDefinitionError(
                        f"{path}:{lineno}: param must read 'name TYPE = default  description', got {value!r}"
                    )
                name, sql_type, default, desc = decl.groups()
                params.append(Param(name, sql_type, _parse_default(default, f"{path}:{lineno}"), desc))
            else:
                header.setdefault(key, []).append(value)
        elif last_key in ("description", "returns") and line[2:].strip():
            header[last_key].append(line[2:].strip())
    where = str(path)
    for key in ("analysis", "description", "returns"):
        if not header.get(key):
            raise AnalysisDefinitionError(f"{where}:1: header lacks '-- {key}: ...'")
    name = header["analysis"][0]
    if name != path.stem:
        raise AnalysisDefinitionError(f"{where}:1: analysis name {name!r} must equal the file name {path.stem!r}")
    body = "\n".join(lines[n_header:]).rstrip().rstrip(";")
    if not body.strip():
        raise AnalysisDefinitionError(f"{where}: no SQL after the header")
    used = set(_PARAM_USE.findall(_strip_comments(body)))
    declared = {p.name for p in params}
    if used - declared:
        raise AnalysisDefinitionError(f"{where}: parameters used but not declared: {sorted(used - declared)}")
    if declared - used:
        raise AnalysisDefinitionError(f"{where}: parameters declared but not used: {sorted(declared - used)}")
    requires = tuple(r.strip() for v in header.get("requires", []) for r in v.split(",") if r.strip())
    materialise = (header.get("materialise") or ["table"])[0]
    if materialise not in _MATERIALISE:
        raise AnalysisDefinitionError(
            f"{where}:1: materialise must be one of {_MATERIALISE}, got {materialise!r}"
        )
    if materialise == "view" and params:
        raise AnalysisDefinitionError(f"{where}:1: a view takes no parameters (materialise it as a table)")
    return Analysis(
        name=name,
        description=" ".join(header["description"]),
        returns=" ".join(header["returns"]),
        params=tuple(params),
        requires=requires,
        sql=body,
        path=path,
        header_lines=n_header,
        materialise=materialise,
    )


def _strip_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def _topological(analyses: dict[str, Analysis]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise AnalysisDefinitionError(f"{analyses[name].path}: requirement cycle {' -> '.join((*chain, name))}")
        state[name] = 1
        for dep in analyses[name].requires:
            if dep not in analyses:
                raise AnalysisDefinitionError(f"{analyses[name].path}: requires unknown analysis {dep!r}")
            visit(dep, (*chain, name))
        state[name] = 2
        order.append(name)

    for name in sorted(analyses):
        visit(name, ())
    return order


class Registry:
    """All analyses of a directory, in dependency order, and the macros file they use."""

    def __init__(self, analyses: dict[str, Analysis], macros_sql: Path = MACROS_SQL) -> None:
        self._analyses = analyses
        self.macros_sql = macros_sql
        self.order: tuple[str, ...] = tuple(_topological(analyses))

    def __contains__(self, name: object) -> bool:
        return name in self._analyses

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (self._analyses[n] for n in self.order)

    def __len__(self) -> int:
        return len(self._analyses)

    def get(self, name: str) -> Analysis:
        try:
            return self._analyses[name]
        except KeyError:
            known = ", ".join(sorted(self._analyses))
            raise UnknownAnalysisError(f"no analysis named {name!r}; known: {known}") from None

    def closure(self, name: str) -> list[str]:
        """`name` and everything it requires, dependencies first."""
        wanted: set[str] = set()
        stack = [name]
        while stack:
            current = stack.pop()
            if current not in wanted:
                wanted.add(current)
                stack.extend(self.get(current).requires)
        return [n for n in self.order if n in wanted]


def install_macros(con: duckdb.DuckDBPyConnection, macros_sql: Path = MACROS_SQL) -> None:
    """Create the shared building-block macros (macros.sql) on a connection (temporary, idempotent)."""
    con.execute(macros_sql.read_text(encoding="utf-8"))


def create_result(
    con: duckdb.DuckDBPyConnection, analysis: Analysis, params: dict[str, ParamValue] | None = None
) -> None:
    """(Re)create the temporary table or view named after `analysis` from its SQL.

    What was there under that name before (table or view, from an earlier run) is dropped first.
    """
    row = con.execute(
        "SELECT table_type FROM information_schema.tables WHERE table_catalog = 'temp' AND table_name = ?",
        [analysis.name],
    ).fetchone()
    if row is not None:
        con.execute(f"DROP {'VIEW' if row[0] == 'VIEW' else 'TABLE'} temp.main.{analysis.name}")
    if analysis.materialise == "view":
        con.execute(f"CREATE TEMP VIEW {analysis.name} AS {analysis.sql}")
    else:
        con.execute(f"CREATE TEMP TABLE {analysis.name} AS {analysis.sql}", analysis.bind(params))


def bind_check(registry: Registry) -> None:
    """Run every analysis, in order, on an empty in-memory store built from the schema contract.

    A query that does not bind (unknown column, bad type, syntax) fails with its file and line.
    """
    con = duckdb.connect(":memory:")
    try:
        con.execute(STORE_SCHEMA_SQL.read_text(encoding="utf-8"))
        install_macros(con, registry.macros_sql)
        for analysis in registry:
            try:
                create_result(con, analysis)
            except duckdb.Error as exc:
                message = str(exc).splitlines()[0]
                match = _LINE_IN_ERROR.search(str(exc))
                line = analysis.header_lines + int(match.group(1)) if match else analysis.header_lines + 1
                raise AnalysisDefinitionError(f"{analysis.path}:{line}: {message}") from exc
    finally:
        con.close()


def load_registry(
    sql_dir: Path = SQL_DIR, *, check_sql: bool = True, macros_sql: Path = MACROS_SQL
) -> Registry:
    """Load and validate every `*.sql` file of `sql_dir` (with the macros of `macros_sql`)."""
    paths = sorted(sql_dir.glob("*.sql"))
    if not paths:
        raise AnalysisDefinitionError(f"{sql_dir}: no .sql analyses found")
    registry = Registry({p.stem: parse_analysis(p) for p in paths}, macros_sql)
    if check_sql:
        bind_check(registry)
    return registry


@cache
def default_registry() -> Registry:
    """The package's analyses, loaded and validated once per process."""
    return load_registry()
