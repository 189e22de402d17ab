"""DuckDB analysis SQL -> Spark SQL, at run time, from the same `.sql` files (no second copy).

An analysis is read from the registry (analytics/sql/*.sql as they are on disk now), its `$params`
become literals, its macro calls (analytics/macros.sql) are inlined, and sqlglot writes it in
Spark's dialect. What sqlglot does not carry over is fixed here, once, on the syntax tree:

- `len(list)` -> `size(list)`: DuckDB's `len` and `length` parse to one node, so the convention
  the analyses follow (`len` for lists, `length` for strings) is read from the tokens first;
- `list(x ORDER BY k, ...)` -> the values of `array_sort(collect_list(struct(k, ..., x)))`
  (Spark's collect_list keeps no order);
- `list_has_any(a, b)` -> `arrays_overlap`, `list_intersect` -> `array_intersect`,
  `quantile_cont(x, q)` -> `percentile(x, q)`;
- a CTE Spark would plan more than once (it inlines every deterministic CTE into each reader)
  becomes a step of its own, computed once into a view the statement reads, as DuckDB computes
  it once (`_split_ctes`; DuckDB's `AS [NOT] MATERIALIZED` hints decide where they are given);
- `UNION [ALL] BY NAME` -> a positional union whose branches select the union of the columns by
  name (NULL where a branch lacks one), the columns read from Spark's analysis of each branch.

A macro whose DuckDB body does not mean the same in Spark gets a Spark body in
analytics/spark/macros.sql (same `CREATE MACRO` form, Spark dialect): the engine difference lives
in that one macro, never in an analysis.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import sqlglot
from sqlglot import TokenType, exp

from kvtrace.analytics.errors import AnalysisDefinitionError
from kvtrace.analytics.registry import MACROS_SQL, Analysis, ParamValue

SPARK_MACROS_SQL: Final = Path(__file__).resolve().parent / "macros.sql"

_MACRO: Final = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMP(?:ORARY)?\s+)?MACRO\s+(\w+)\s*\(([^)]*)\)\s+AS\s+(.*?);",
    re.IGNORECASE | re.DOTALL,
)
_PARAM: Final = re.compile(r"\$([a-z_][a-z0-9_]*)")
_LIST_LEN: Final = "kvtrace_list_len"
_WITH: Final = "with_" if "with_" in exp.Select.arg_types else "with"  # sqlglot renamed the key

# Resolves the output column names of one Spark SELECT (the session's analysis of it, not a run).
ColumnResolver = Callable[[str], list[str]]


@dataclass(frozen=True)
class Macro:
    """One scalar macro: parameter names and its body as a syntax tree."""

    name: str
    params: tuple[str, ...]
    body: exp.Expr
    source: Path


def _strip_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def parse_macros(path: Path, dialect: str) -> dict[str, Macro]:
    """The `CREATE ... MACRO name(args) AS body;` definitions of one file."""
    text = _strip_comments(path.read_text(encoding="utf-8"))
    macros: dict[str, Macro] = {}
    for match in _MACRO.finditer(text):
        name, args, body = match.group(1).lower(), match.group(2), match.group(3)
        params = tuple(a.strip().lower() for a in args.split(",") if a.strip())
        try:
            tree = sqlglot.parse_one(_rename_len(body) if dialect == "duckdb" else body, read=dialect)
        except sqlglot.errors.ParseError as exc:
            raise AnalysisDefinitionError(f"{path}: macro {name}: {str(exc).splitlines()[0]}") from exc
        macros[name] = Macro(name, params, tree, path)
    return macros


def load_macros(
    duckdb_macros: Path = MACROS_SQL, spark_macros: Path | None = SPARK_MACROS_SQL
) -> dict[str, Macro]:
    """macros.sql's macros, each replaced by its Spark form where analytics/spark/macros.sql has one."""
    macros = parse_macros(duckdb_macros, "duckdb")
    if spark_macros is not None and spark_macros.exists():
        for name, macro in parse_macros(spark_macros, "spark").items():
            if name not in macros:
                raise AnalysisDefinitionError(f"{spark_macros}: {name} overrides no macro of {duckdb_macros}")
            macros[name] = macro
    return macros


def _literal(value: ParamValue, sql_type: str) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, float) or sql_type in ("DOUBLE", "FLOAT", "REAL"):
        return f"CAST({float(value)!r} AS DOUBLE)"
    return str(int(value))


def _rename_len(sql: str) -> str:
    """DuckDB `len(` (lists, by the analyses' convention) -> a marker name that becomes Spark's
    `size(`, by tokens (never inside a string literal or an identifier)."""
    tokens = sqlglot.tokenize(sql, read="duckdb")
    edits: list[tuple[int, int]] = []
    for i, tok in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if (
            tok.token_type == TokenType.VAR
            and tok.text.lower() == "len"
            and nxt
            and nxt.token_type == TokenType.L_PAREN
        ):
            edits.append((tok.start, tok.end + 1))
    for start, end in sorted(edits, reverse=True):
        sql = sql[:start] + _LIST_LEN + sql[end:]
    return sql


def _prepare(analysis: Analysis, params: Mapping[str, ParamValue] | None) -> str:
    """The analysis' SQL with `$params` as literals and `len(` renamed, outside string literals."""
    values = analysis.bind(dict(params or {}))
    types = {p.name: p.sql_type for p in analysis.params}
    sql = _rename_len(analysis.sql)

    def param(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise AnalysisDefinitionError(f"{analysis.path}: parameter ${name} is not declared")
        return _literal(values[name], types[name])

    parts = re.split(r"('(?:[^']|'')*')", sql)
    return "".join(p if i % 2 else _PARAM.sub(param, p) for i, p in enumerate(parts))


def _inline(tree: exp.Expr, macros: Mapping[str, Macro], where: str) -> exp.Expr:
    for _ in range(16):  # macros may call macros
        changed = False

        def expand(node: exp.Expr) -> exp.Expr:
            nonlocal changed
            if not isinstance(node, exp.Anonymous):
                return node
            macro = macros.get(node.name.lower())
            if macro is None:
                return node
            args = node.expressions
            if len(args) != len(macro.params):
                raise AnalysisDefinitionError(
                    f"{where}: {macro.name} takes {len(macro.params)} arguments, got {len(args)}"
                )
            bound = dict(zip(macro.params, args, strict=True))

            def substitute(inner: exp.Expr) -> exp.Expr:
                if isinstance(inner, exp.Column) and not inner.table and inner.name.lower() in bound:
                    return exp.Paren(this=bound[inner.name.lower()].copy())
                return inner

            changed = True
            return exp.Paren(this=macro.body.copy().transform(substitute))

        tree = tree.transform(expand)
        if not changed:
            return tree
    raise AnalysisDefinitionError(f"{where}: macros nest more than 16 deep (a macro calls itself?)")


def _ordered_list(node: exp.ArrayAgg) -> exp.Expr:
    """list(x ORDER BY k1, k2) -> transform(array_sort(collect_list(named_struct(k.., v))), s -> s.v)."""
    order = node.this
    value = order.this
    fields: list[exp.Expr] = []
    for i, key in enumerate(order.expressions):
        if key.args.get("desc"):
            raise AnalysisDefinitionError(
                f"list(... ORDER BY {key.sql('duckdb')} DESC) has no Spark form yet"
            )
        fields += [exp.Literal.string(f"k{i}"), key.this.copy()]
    fields += [exp.Literal.string("v"), value.copy()]
    collected = exp.Anonymous(
        this="COLLECT_LIST", expressions=[exp.Anonymous(this="NAMED_STRUCT", expressions=fields)]
    )
    lam = exp.Lambda(
        this=exp.Dot(this=exp.column("kvs"), expression=exp.to_identifier("v")),
        expressions=[exp.to_identifier("kvs")],
    )
    return exp.Anonymous(
        this="TRANSFORM", expressions=[exp.Anonymous(this="ARRAY_SORT", expressions=[collected]), lam]
    )


def _one_based_indexes(tree: exp.Expr) -> None:
    """`list[i]` with a computed i: DuckDB counts from 1, Spark from 0 (sqlglot shifts literal
    indexes only). In place, once: the fixed-point passes below never see it again."""
    for bracket in list(tree.find_all(exp.Bracket)):
        index = bracket.expressions
        if len(index) == 1 and not isinstance(index[0], exp.Literal) and not isinstance(index[0], exp.Slice):
            bracket.set(
                "expressions",
                [exp.Sub(this=exp.Paren(this=index[0].copy()), expression=exp.Literal.number(1))],
            )


def _unpivot(node: exp.Expr) -> exp.Expr:
    """DuckDB's `UNPIVOT (q) ON a, b INTO NAME n VALUE v` -> Spark's `SELECT * FROM (q) UNPIVOT (v FOR n IN (a, b))`."""
    if not (isinstance(node, exp.Pivot) and node.args.get("unpivot") and node.args.get("into") is not None):
        return node
    into = node.args["into"]
    source = node.this.this if isinstance(node.this, exp.Subquery) else node.this
    if not isinstance(source, exp.Query):
        source = exp.select("*").from_(source)
    cols = ", ".join(c.sql(dialect="spark") for c in node.expressions)
    value = into.expressions[0].sql(dialect="spark")
    text = (
        f"SELECT * FROM ({source.sql(dialect='spark')}) AS _kv_unpivot "
        f"UNPIVOT ({value} FOR {into.this.sql(dialect='spark')} IN ({cols}))"
    )
    return sqlglot.parse_one(text, read="spark")


def _json_maps(node: exp.Expr) -> exp.Expr:
    """DuckDB's JSON -> MAP casts and the JSON-value functions on their values, in Spark's terms:
    `CAST(j AS MAP(VARCHAR, JSON))` -> `from_json(j, 'map<string,variant>')` (values keep their JSON
    type), `CAST(j AS MAP(VARCHAR, VARCHAR))` -> `from_json(j, 'map<string,string>')`;
    `json_extract_string(v, '$')` -> `variant_get(v, '$', 'string')`; `json_type(v)` -> DuckDB's
    names (ARRAY, OBJECT, NULL, ...) from `schema_of_variant(v)`."""
    if (
        isinstance(node, exp.Cast)
        and node.to.this == exp.DataType.Type.MAP
        and not isinstance(node.this, exp.Map)
    ):
        value = node.to.expressions[1] if len(node.to.expressions) == 2 else None
        kind = "variant" if value is not None and value.this == exp.DataType.Type.JSON else "string"
        return exp.Anonymous(
            this="FROM_JSON", expressions=[node.this, exp.Literal.string(f"map<string,{kind}>")]
        )
    if isinstance(node, exp.JSONExtractScalar) and node.expression.sql() in ("'$'", "$"):
        return exp.Anonymous(
            this="VARIANT_GET", expressions=[node.this, exp.Literal.string("$"), exp.Literal.string("string")]
        )
    if isinstance(node, exp.JSONType):
        schema = f"SCHEMA_OF_VARIANT({node.this.sql(dialect='spark')})"
        return sqlglot.parse_one(
            f"CASE WHEN {schema} LIKE 'ARRAY%' THEN 'ARRAY' WHEN {schema} LIKE 'OBJECT%' THEN 'OBJECT' "
            f"WHEN {schema} = 'VOID' THEN 'NULL' ELSE {schema} END",
            read="spark",
        )
    return node


def _zip_unnests(tree: exp.Expr) -> None:
    """DuckDB runs several `unnest(list) AS x` of one SELECT side by side (zipped, NULL-padded);
    Spark allows one generator a SELECT: `inline(arrays_zip(a, b)) AS (x, y)`. In place."""
    for select in list(tree.find_all(exp.Select)):
        gens = [e for e in select.expressions if isinstance(e, exp.Alias) and isinstance(e.this, exp.Explode)]
        if len(gens) < 2:
            continue
        lists = ", ".join(g.this.this.sql(dialect="spark") for g in gens)
        names = ", ".join(g.alias for g in gens)
        zipped = sqlglot.parse_one(
            f"SELECT INLINE(ARRAYS_ZIP({lists})) AS ({names})", read="spark"
        ).expressions[0]
        first = select.expressions.index(gens[0])
        rest = [e for e in select.expressions if e not in gens]
        select.set("expressions", [*rest[:first], zipped, *rest[first:]])


def _functions(node: exp.Expr) -> exp.Expr:
    if isinstance(node, exp.Anonymous):
        name = node.name.lower()
        if name == _LIST_LEN:
            return exp.Anonymous(this="SIZE", expressions=node.expressions)
        if name == "list_intersect":
            return exp.Anonymous(this="ARRAY_INTERSECT", expressions=node.expressions)
    if isinstance(node, exp.ArrayOverlaps):
        return exp.Anonymous(this="ARRAYS_OVERLAP", expressions=[node.this, node.expression])
    if isinstance(node, exp.ArrayAgg) and isinstance(node.this, exp.Order):
        return _ordered_list(node)
    if (
        isinstance(node, exp.PercentileCont)
        and node.expression is not None
        and not isinstance(node.parent, exp.WithinGroup)
    ):
        return exp.Anonymous(this="PERCENTILE", expressions=[node.this, node.expression])
    return node


@dataclass
class SparkSQL:
    """The Spark SQL made from one analysis (what the Spark runner executes, verbatim): `steps`
    first, each (view, SQL) made a view in order, then `sql`, which reads them."""

    name: str
    sql: str
    steps: list[tuple[str, str]] = field(default_factory=list)


class Transpiler:
    """Turns registry analyses into Spark SQL; `resolve_columns` (a Spark session's analysis of a
    SELECT) is needed only for `UNION BY NAME`."""

    def __init__(
        self, macros: Mapping[str, Macro] | None = None, resolve_columns: ColumnResolver | None = None
    ) -> None:
        self.macros = dict(macros) if macros is not None else load_macros()
        self.resolve_columns = resolve_columns

    def tree(self, analysis: Analysis, params: Mapping[str, ParamValue] | None = None) -> exp.Expr:
        """The analysis as a Spark-ready syntax tree (before UNION BY NAME is resolved)."""
        where = str(analysis.path)
        try:
            tree = sqlglot.parse_one(_prepare(analysis, params), read="duckdb")
        except sqlglot.errors.ParseError as exc:
            raise AnalysisDefinitionError(
                f"{where}: sqlglot cannot parse it: {str(exc).splitlines()[0]}"
            ) from exc
        tree = _inline(tree, self.macros, where)
        _one_based_indexes(tree)
        for cte in tree.find_all(exp.CTE):  # DuckDB's [NOT] MATERIALIZED hints: read by _split_ctes
            cte.meta["materialized"] = cte.args.get("materialized")
            cte.set("materialized", None)
        tree = tree.transform(_unpivot).transform(_json_maps)
        _zip_unnests(tree)
        # a replaced node's arguments are not revisited in the same pass: repeat to a fixed point
        for _ in range(16):
            before = tree.sql(dialect="spark")
            tree = tree.transform(_functions)
            if tree.sql(dialect="spark") == before:
                break
        return tree

    def spark_sql(
        self,
        analysis: Analysis,
        params: Mapping[str, ParamValue] | None = None,
        tables: Mapping[str, str] | None = None,
        prefix: str | None = None,
    ) -> SparkSQL:
        """Spark SQL for `analysis`; `tables` renames the tables it reads (for a shard's views).
        The CTEs worth computing once (_split_ctes) become steps, views named `prefix__cte`
        (prefix: the analysis' name by default)."""
        tree = self.tree(analysis, params)
        if tables:
            tree = _rename_tables(tree, tables)
        tree = self._unions_by_name(tree, str(analysis.path))
        tree, steps = _split_ctes(tree, prefix or analysis.name)
        return SparkSQL(analysis.name, tree.sql(dialect="spark"), steps)

    def _unions_by_name(self, tree: exp.Expr, where: str) -> exp.Expr:
        if not any(u.args.get("by_name") for u in tree.find_all(exp.Union)):
            return tree
        if self.resolve_columns is None:
            raise AnalysisDefinitionError(f"{where}: UNION BY NAME needs a Spark session to resolve columns")
        with_ = tree.args.get(_WITH)
        ctes: list[exp.CTE] = list(with_.expressions) if with_ is not None else []
        for i, cte in enumerate(ctes):
            if any(u.args.get("by_name") for u in cte.find_all(exp.Union)):
                cte.set("this", self._rewrite_unions(cte.this, ctes[:i], where))
        body = tree.copy()
        body.set(_WITH, None)
        if any(u.args.get("by_name") for u in body.find_all(exp.Union)):
            rewritten = self._rewrite_unions(body, ctes, where)
            if with_ is not None:
                rewritten.set(_WITH, with_)
            return rewritten
        return tree

    def _columns(self, query: exp.Expr, ctes: list[exp.CTE], where: str) -> list[str]:
        probe = exp.select("*").from_(
            exp.Subquery(this=query.copy(), alias=exp.TableAlias(this=exp.to_identifier("_kv_probe")))
        )
        if ctes:
            probe.set(_WITH, exp.With(expressions=[c.copy() for c in ctes]))
        assert self.resolve_columns is not None
        try:
            return self.resolve_columns(probe.sql(dialect="spark"))
        except Exception as exc:
            raise AnalysisDefinitionError(
                f"{where}: Spark cannot resolve a UNION BY NAME branch: {str(exc).splitlines()[0]}"
            ) from exc

    def _rewrite_unions(self, query: exp.Expr, ctes: list[exp.CTE], where: str) -> exp.Expr:
        """Every UNION BY NAME of `query` made positional, innermost first (a branch may be one)."""
        while True:
            pending = [u for u in query.find_all(exp.Union) if u.args.get("by_name")]
            innermost = [
                u
                for u in pending
                if not any(v.args.get("by_name") for v in u.find_all(exp.Union) if v is not u)
            ]
            if not innermost:
                return query
            node = innermost[0]
            positional = self._positional(node, ctes, where)
            if node is query:
                query = positional
            else:
                node.replace(positional)

    def _positional(self, node: exp.Union, ctes: list[exp.CTE], where: str) -> exp.Expr:
        left, right = node.this, node.expression
        lcols, rcols = self._columns(left, ctes, where), self._columns(right, ctes, where)
        names = lcols + [c for c in rcols if c not in lcols]

        def branch(q: exp.Expr, have: list[str]) -> exp.Expr:
            cols = [
                exp.column(n, quoted=True) if n in have else exp.alias_(exp.null(), n, quoted=True)
                for n in names
            ]
            return exp.select(*cols).from_(
                exp.Subquery(this=q.copy(), alias=exp.TableAlias(this=exp.to_identifier("_kv_bn")))
            )

        union = exp.Union(
            this=branch(left, lcols),
            expression=branch(right, rcols),
            distinct=node.args.get("distinct", False),
        )
        for key in ("order", "limit", "offset"):
            if node.args.get(key) is not None:
                union.set(key, node.args[key].copy())
        return union


def _references(node: exp.Expr, name: str) -> int:
    return sum(1 for t in node.find_all(exp.Table) if not t.db and t.name.lower() == name)


def _does_work(query: exp.Expr) -> bool:
    """Whether a CTE joins, groups, windows, dedups or unions (else it is a scan Spark prunes into
    each reader for less than a copy costs)."""
    return any(
        query.find(kind) is not None for kind in (exp.Join, exp.Group, exp.Window, exp.Distinct, exp.Union)
    )


def _split_ctes(tree: exp.Expr, prefix: str) -> tuple[exp.Expr, list[tuple[str, str]]]:
    """The CTEs Spark would plan more than once, made steps of their own.

    Spark inlines every deterministic CTE into each place that reads it, so a CTE read by two
    others that are each read twice is planned, scanned and joined four times (one analysis
    became a plan of 25 file scans and 45 broadcasts). DuckDB computes such a CTE once; here a
    CTE that does work (_does_work) and would be inlined twice or more, counting the inlining of
    its readers, is computed once as a view of its own (`prefix__name`, checkpointed by the
    runner) and read from there. `AS NOT MATERIALIZED` keeps a CTE inline, `AS MATERIALIZED`
    makes it a step. Meaning is unchanged: a deterministic query gives the same rows either way."""
    with_ = tree.args.get(_WITH)
    if with_ is None:
        return tree, []
    ctes: list[exp.CTE] = list(with_.expressions)
    names = [c.alias_or_name.lower() for c in ctes]
    body = tree.copy()
    body.set(_WITH, None)
    # times each CTE is planned: from the last to the first, a reader that is a step counts once
    planned: dict[str, int] = {}
    step: set[str] = set()
    for i in range(len(ctes) - 1, -1, -1):
        name = names[i]
        count = _references(body, name) + sum(
            _references(ctes[j].this, name) * (1 if names[j] in step else planned[names[j]])
            for j in range(i + 1, len(ctes))
        )
        planned[name] = count
        hint = ctes[i].meta.get("materialized")
        if hint is True or (hint is not False and count >= 2 and _does_work(ctes[i].this)):
            step.add(name)
    if not step:
        return tree, []
    views = {name: f"{prefix}__{name}" for name in names if name in step}
    inline = [c for c, n in zip(ctes, names, strict=True) if n not in step]

    def query(select: exp.Expr) -> exp.Expr:
        """`select` reading the steps' views, with the inline CTEs it needs (transitively)."""
        select = _rename_tables(select, views, keep_ctes=False)
        need: list[exp.CTE] = []
        for cte in reversed(inline):
            name = cte.alias_or_name.lower()
            if _references(select, name) or any(_references(n.this, name) for n in need):
                need.insert(0, cte)
        need = [exp.CTE(this=_rename_tables(c.this, views, keep_ctes=False), alias=c.args["alias"].copy())
                for c in need]
        if need:
            select.set(_WITH, exp.With(expressions=need))
        return select

    steps = [(views[n], query(c.this.copy()).sql(dialect="spark")) for c, n in zip(ctes, names, strict=True) if n in step]
    return query(body), steps


def _rename_tables(tree: exp.Expr, tables: Mapping[str, str], keep_ctes: bool = True) -> exp.Expr:
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)} if keep_ctes else set()

    def rename(node: exp.Expr) -> exp.Expr:
        if (
            isinstance(node, exp.Table)
            and not node.db
            and node.name.lower() in tables
            and node.name.lower() not in ctes
        ):
            new = exp.to_table(tables[node.name.lower()])
            new.set("alias", node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(node.name)))
            return new
        return node

    return tree.transform(rename)
