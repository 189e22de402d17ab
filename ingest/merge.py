"""A staged batch -> normalised rows -> the store.

`Staged` is one decoded batch as Arrow tables (from batches.py, or a live payload); `prepare`
adds, in the decode worker, what the merge needs beyond them: the batch's distinct resources
split out, and the rows that follow from each span alone (Deriver, by the span-local SQL files
ingest/sql/local_*.sql and derive_*.sql). `merge_staged` / `_merge` then store it inside the
caller's transaction, on the store's one connection, by the SQL files of ingest/sql/ in this
order (each file's header names what it reads and writes):

  merge_spans.sql, merge_new_spans.sql   dedup (span_keys), view new_spans: the spans this batch adds
  merge_store.sql                        raw rows: span_keys, resources, spans, span_events, span_links
  (derive_rows' results)                 requests, spec_steps, kv_events, aborts, feedback
  read_targets.sql ... normalise_reads.sql         kv_events 'read' rows (need the parent forward)
  stage_targets.sql ... normalise_stages.sql       request_stages (need the request root; the walk
                                                   up the batch's own spans is span-local:
                                                   batch_stage_walk, by stage_walk.sql)

The last two may need spans stored by earlier batches or files, and leave what they cannot
resolve yet in ingest_pending."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kvtrace.ingest import kvfast
from kvtrace.ingest.decode import QUARANTINE_SCHEMA, StagedRows, StagedTables
from kvtrace.ingest.identity import with_instance_fallback

DUCKDB_MEMORY_LIMIT = "512MB"
# Each decode worker's Deriver (one a core): a 50k-span batch holds nothing between batches and
# peaks well below this; a batch that does not fit is derived on the store's connection instead.
DERIVER_MEMORY_LIMIT = "256MB"


@dataclass
class BatchResult:
    """Outcome of one merged batch or live payload."""

    accepted: int = 0        # valid spans decoded (stored now or already stored)
    new_spans: int = 0       # of which newly stored
    rejected: int = 0        # records quarantined (malformed spans, lines, frames)
    reasons: list[str] = field(default_factory=list)  # one per rejected record, in order

    def add(self, other: BatchResult) -> None:
        self.accepted += other.accepted
        self.new_spans += other.new_spans
        self.rejected += other.rejected
        self.reasons.extend(other.reasons)


@cache
def _sql(name: str) -> str:
    return resources.files("kvtrace.ingest").joinpath("sql", f"{name}.sql").read_text(encoding="utf-8")


def _scalar(con: duckdb.DuckDBPyConnection, query: str) -> int:
    rows = con.execute(query).fetchall()
    row = rows[0] if rows else None
    return int(row[0]) if row and row[0] is not None else 0


RESOURCE_COLUMNS = ("service_name", "instance_id", "host_name", "service_version", "role")

# The span-local SQL (each file one SELECT over new_spans; see ingest/sql/derive_kv_events.sql):
# ingest/sql/local_<name>.sql gives the batch projection batch_<name> (in this order: a later file
# may read an earlier one; the store's normalisation reads them too), and derive_<table>.sql the
# rows of store table <table> that follow from each span alone. Run per batch by a Deriver in a
# decode worker, or on the store's connection for a live payload (derive_rows).
LOCAL_TABLES = ("roots", "read_targets", "forwards", "stage_targets", "stage_universe")

DERIVED_TABLES = ("requests", "spec_steps", "kv_events", "aborts", "feedback")


@dataclass
class Staged:
    """One decoded batch as Arrow tables (decode.SPAN_SCHEMA, EVENT_SCHEMA, LINK_SCHEMA,
    QUARANTINE_SCHEMA), from the columnar fast path or the validating decoder. `prepare` adds
    what the merge needs beyond them (in the decode worker, when there is one)."""

    spans: pa.Table
    events: pa.Table
    links: pa.Table
    quarantine: pa.Table
    split: tuple[pa.Table, pa.Table] | None = None   # split_resources()
    derived: dict[str, pa.Table] | None = None       # Deriver.derive()
    # Which file (an index into ingest_files' list of files to read) each span and each
    # quarantine row came from, when the batch holds several files' rows; None: one file.
    span_files: np.ndarray | None = None
    quarantine_files: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.spans = with_instance_fallback(self.spans)  # before anything reads instance_id

    @classmethod
    def from_rows(cls, batch: StagedRows) -> Staged:
        return cls(*batch.tables())

    @classmethod
    def from_columnar(cls, tables: StagedTables) -> Staged:
        return cls(*tables, QUARANTINE_SCHEMA.empty_table())

    def prepare(self, deriver: Deriver) -> Staged:
        """Split the resources out and derive the span-local normalised rows, once."""
        if self.split is None:
            self.split = self.split_resources()
        if self.derived is None and self.spans.num_rows:
            try:
                self.derived = deriver.derive(self.split[0])
            except duckdb.Error:
                # e.g. out of memory on a giant span: the merge runs the same SQL on the store's
                # connection instead (merge_staged), which can spill to the store's disk
                self.derived = None
        return self

    def split_resources(self) -> tuple[pa.Table, pa.Table]:
        """The spans with `resource_attributes` (the resource's attribute text, repeated on every
        span) replaced by `res_idx`, and the batch's distinct resources (res_idx,
        resource_attributes and the resource-level columns), a handful of rows. The merge then
        hashes and stores each resource's text once instead of once per span."""
        spans = self.spans
        pos = spans.schema.get_field_index("resource_attributes")
        text = spans.column(pos).combine_chunks()
        encoded = pc.dictionary_encode(text, null_encoding="encode")
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        _, first = np.unique(indices, return_index=True)
        firsts = pa.array(first, pa.int64())
        resources = pa.table(
            {
                "res_idx": pa.array(np.arange(len(encoded.dictionary), dtype=np.int32)),
                "resource_attributes": encoded.dictionary,
                **{c: spans.column(c).take(firsts) for c in RESOURCE_COLUMNS},
            }
        )
        return spans.set_column(pos, "res_idx", encoded.indices.cast(pa.int32())), resources


# The staged columns that hold attribute text as JSON. Our decoders write that text (the C
# decoders' JSON writer, orjson in the validating decoder), so it is valid JSON by construction
# and reaches the store typed as JSON (Arrow's arrow.json extension type, read by DuckDB as its
# JSON type) with no second parse: a `::JSON` cast of the text re-parses every byte on the
# store's one thread (~0.9 CPU-s per 1M simulator spans for span attributes alone). Resources
# are not among them: their id is hash() of the text, which must not change with its type.
JSON_COLUMNS = ("attributes", "scope_attributes")


def as_json(table: pa.Table) -> pa.Table:
    """`table` with its JSON_COLUMNS typed as JSON (zero copy: each chunk keeps its buffers)."""
    json_type = pa.json_(pa.string())
    for name in JSON_COLUMNS:
        pos = table.schema.get_field_index(name)
        if pos < 0 or table.schema.field(pos).type != pa.string():
            continue
        chunks = [pa.ExtensionArray.from_storage(json_type, c) for c in table.column(pos).chunks]
        table = table.set_column(pos, name, pa.chunked_array(chunks, json_type))
    return table


def derive_rows(
    con: duckdb.DuckDBPyConnection, given: dict[str, pa.Table] | None = None, spec_in_c: bool = False
) -> dict[str, pa.Table]:
    """The span-local SQL run on `con`, whose view new_spans holds the batch's spans: the
    batch_<name> projections of LOCAL_TABLES (each left registered on `con` under that name for
    the files after it; the caller unregisters them), batch_stage_walk (the first stage walk: the
    batch's slices up through the batch's own spans), batch_reads (the kv_events 'read' rows of the
    batch's read targets whose parent forward is in the batch) with batch_read_waiting (the other
    targets), and the rows of each DERIVED_TABLES table
    (those in `given` already derived another way; spec_steps by ingest/kvfast.py with
    `spec_in_c`), as Arrow tables by those names."""
    out: dict[str, pa.Table] = {}
    for name in LOCAL_TABLES:
        out[f"batch_{name}"] = rows = con.sql(_sql(f"local_{name}")).to_arrow_table()
        con.register(f"batch_{name}", rows)
    out["batch_stage_walk"] = walk_stages(con, "batch_stage_targets", "batch_stage_universe")
    out["batch_reads"] = read_rows(con, "batch_read_targets", "batch_forwards")
    out["batch_read_waiting"] = con.sql(
        "SELECT t.* FROM batch_read_targets AS t "
        "ANTI JOIN batch_forwards AS f ON f.trace_id = t.trace_id AND f.span_id = t.parent_span_id"
    ).to_arrow_table()
    if spec_in_c:
        given = {**(given or {}), "spec_steps": _spec_steps(con, out["batch_roots"])}
    for table in DERIVED_TABLES:
        out[table] = given[table] if given and table in given else con.sql(_sql(f"derive_{table}")).to_arrow_table()
    return out


def _select_over(con: duckdb.DuckDBPyConnection, name: str, **views: str) -> pa.Table:
    """ingest/sql/<name>.sql, one SELECT over the views its header names, with each view pointed
    at a table (view=table) while it runs."""
    for view, table in views.items():
        con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM {table}")
    try:
        return con.sql(_sql(name)).to_arrow_table()
    finally:
        con.execute("; ".join(f"DROP VIEW {view}" for view in views))


def walk_stages(con: duckdb.DuckDBPyConnection, slices: str, steps: str) -> pa.Table:
    """stage_walk.sql: each stage slice of table `slices` walked up its parents through the spans
    of table `steps`."""
    return _select_over(con, "stage_walk", walk_in=slices, walk_steps=steps)


def read_rows(con: duckdb.DuckDBPyConnection, targets: str, forwards: str) -> pa.Table:
    """read_rows.sql: the kv_events 'read' rows of the read targets of table `targets` whose
    parent forward is in table `forwards`."""
    return _select_over(con, "read_rows", reads_of=targets, reads_from=forwards)


def _spec_steps(con: duckdb.DuckDBPyConnection, roots: pa.Table) -> pa.Table:
    """spec_steps rows of `roots` (batch_roots, registered on `con` under that name) by
    ingest/kvfast.py (C), the roots it declines through derive_spec_steps.sql."""
    got = kvfast.spec_steps(roots)
    if got is None:
        return con.sql(_sql("derive_spec_steps")).to_arrow_table()
    rows, declined = got
    if declined.num_rows:
        con.register("batch_roots", declined)
        try:
            by_sql = con.sql(_sql("derive_spec_steps")).to_arrow_table().cast(kvfast.SPEC_SCHEMA)
        finally:
            con.register("batch_roots", roots)
        rows = pa.concat_tables([rows, by_sql])
    return rows


class Deriver:
    """The normalised rows that follow from each span alone (requests, spec_steps, kv_events of
    alloc/free/transfer/load, aborts, feedback) and the batch projections the store's
    normalisation reads (LOCAL_TABLES), by the very SQL files the store runs for live payloads
    (derive_rows), in a private in-memory DuckDB: so this work runs in the decode workers, beside
    the store's merge. Each query goes straight to Arrow. kv_events and spec_steps rows come from
    ingest/kvfast.py (C, the same rows; what it declines through derive_kv_events.sql and
    derive_spec_steps.sql) when no span is twice in the batch. The rows of a span seen twice in the batch come from its first occurrence, as the
    merge keeps it; the merge stores the rows of the spans it adds."""

    def __init__(self, memory_limit: str = DERIVER_MEMORY_LIMIT) -> None:
        # No spilling (an in-memory DuckDB would spill into ./.tmp, wherever the user stands):
        # a batch that does not fit raises, and prepare() leaves it to the store's connection.
        # No progress bar: this runs in the background, under ingest's own.
        self.con = duckdb.connect(config={"threads": 1, "memory_limit": memory_limit, "temp_directory": ""})
        self.con.execute("SET enable_progress_bar = false")

    def derive(self, spans: pa.Table) -> dict[str, pa.Table]:
        """The derived tables' rows for `spans` (split_resources()' spans: res_idx, not the
        resource text), as Arrow tables by table name."""
        con = self.con
        con.register("stage_spans", spans)
        try:
            doubles = _scalar(con, "SELECT count(*) - count(DISTINCT (trace_id, span_id)) FROM stage_spans")
            given = {} if doubles else self._kv_events(spans)
            con.execute(
                "CREATE OR REPLACE TEMP VIEW new_spans AS SELECT * EXCLUDE (res_idx) FROM stage_spans"
                + (" QUALIFY row_number() OVER (PARTITION BY trace_id, span_id ORDER BY seq) = 1" if doubles else "")
            )
            return derive_rows(con, given, spec_in_c=not doubles)
        finally:
            for name in ("stage_spans", "kv_declined", *(f"batch_{n}" for n in LOCAL_TABLES)):
                _unregister(con, name)

    def _kv_events(self, spans: pa.Table) -> dict[str, pa.Table]:
        """{"kv_events": rows} by ingest/kvfast.py (C), the spans it declines through
        derive_kv_events.sql; {} where the extension is not built (derive_rows runs the SQL)."""
        got = kvfast.kv_events(spans)
        if got is None:
            return {}
        rows, declined = got
        if declined.num_rows:
            con = self.con
            con.register("kv_declined", declined)
            con.execute("CREATE OR REPLACE TEMP VIEW new_spans AS SELECT * EXCLUDE (res_idx) FROM kv_declined")
            by_sql = con.sql(_sql("derive_kv_events")).to_arrow_table().cast(kvfast.KV_SCHEMA)
            rows = pa.concat_tables([rows, by_sql])
        return {"kv_events": rows}

    def close(self) -> None:
        self.con.close()


def merge_staged(
    con: duckdb.DuckDBPyConnection, staged: Staged, file_id: int | None, source: str
) -> BatchResult:
    """Store one staged batch inside the caller's open transaction: raw tables, normalised
    tables (re-deriving rows of earlier spans whose relative arrived now) and quarantine rows,
    all of one source (`file_id`: its ingested_files row, None for a live payload)."""
    file_ids = pa.nulls(staged.spans.num_rows, pa.int32()) if file_id is None else \
        pa.array(np.full(staged.spans.num_rows, file_id, dtype=np.int32))
    sources = pa.array([source] * staged.quarantine.num_rows, pa.string())
    result, _ = _merge(con, staged, file_ids, sources, per_file=False)
    return result


def _merge(
    con: duckdb.DuckDBPyConnection, staged: Staged, file_ids: pa.Array, sources: pa.Array, per_file: bool
) -> tuple[BatchResult, dict[int, int]]:
    """merge_staged for a batch of several files' rows: `file_ids` (one per span: the
    ingested_files row that stores it) and `sources` (one per quarantine row). Returns the batch's
    result and, with `per_file`, the new spans of each file id."""
    spans, events, links, quarantine = staged.spans, staged.events, staged.links, staged.quarantine
    reasons = quarantine.column("reason").to_pylist()
    result = BatchResult(accepted=spans.num_rows, rejected=quarantine.num_rows, reasons=reasons)
    new_by_file: dict[int, int] = {}
    if quarantine.num_rows:
        con.register("stage_quarantine", quarantine.append_column("source", sources))
        try:
            con.execute(
                "INSERT INTO quarantine BY NAME SELECT source, line, byte_offset, span_id, reason, "
                "raw, raw_bytes, now()::TIMESTAMP AS quarantined_at FROM stage_quarantine"
            )
        finally:
            _unregister(con, "stage_quarantine")
    if not spans.num_rows:
        return result, new_by_file
    if staged.split is None:
        staged.split = staged.split_resources()
    spans, resources = staged.split
    con.register("stage_spans", as_json(spans.append_column("file_id", file_ids)))
    con.register("stage_resources", resources)
    con.register("stage_events", as_json(events))
    con.register("stage_links", as_json(links))
    try:
        con.execute(_sql("merge_spans"))
        doubles = _scalar(con, "SELECT (SELECT count(*) FROM stored_doubles) + "
                               "(SELECT count(*) FROM stage_spans) - (SELECT count(*) FROM batch_keys)")
        if doubles:
            con.execute(_sql("merge_new_spans"))
        con.execute(_sql("merge_store"))
        if per_file:
            new_by_file = {int(f): int(n) for f, n in
                           con.execute("SELECT file_id, count(*) FROM new_spans GROUP BY file_id").fetchall()}
            result.new_spans = sum(new_by_file.values())
        else:
            result.new_spans = _scalar(con, "SELECT count(*) FROM new_spans")
        if result.new_spans:
            if staged.derived is not None:
                _store_derived(con, staged.derived, only_new=bool(doubles))
            else:  # not prepared (a live payload): the same SQL, on the store's connection
                _store_derived(con, derive_rows(con), only_new=False)
            _normalise(con)
    finally:
        for name in ("stage_spans", "stage_resources", "stage_events", "stage_links", "batch_stage_walk",
                     *(f"batch_{n}" for n in LOCAL_TABLES)):
            _unregister(con, name)
    return result, new_by_file


def _store_derived(con: duckdb.DuckDBPyConnection, derived: dict[str, pa.Table], only_new: bool) -> None:
    """Insert the span-local rows (derive_rows) into their tables and register the batch
    projections and the first stage walk for _normalise. When every span of the batch is new: all
    of them, the reads resolved in the batch stored (batch_reads) and the other read targets left
    to _normalise (batch_read_targets := batch_read_waiting). Else those of the spans this batch
    adds (view new_spans), walked again and every read target left to _normalise: a relative
    stored before is the stored span, not the batch's copy."""
    for name in LOCAL_TABLES:
        rows = derived[f"batch_{name}"]
        if only_new:
            con.register("derived_rows", rows)
            try:
                rows = con.sql("SELECT d.* FROM derived_rows AS d SEMI JOIN new_spans AS n "
                               "USING (trace_id, span_id)").to_arrow_table()
            finally:
                _unregister(con, "derived_rows")
        elif name == "read_targets":
            rows = derived["batch_read_waiting"]
        con.register(f"batch_{name}", rows)
    inserts = [(table, derived[table]) for table in DERIVED_TABLES]
    if only_new:
        con.register("batch_stage_walk", walk_stages(con, "batch_stage_targets", "batch_stage_universe"))
    else:
        con.register("batch_stage_walk", derived["batch_stage_walk"])
        inserts.append(("kv_events", derived["batch_reads"]))
    for table, rows in inserts:
        if not rows.num_rows:
            continue
        con.register("derived_rows", rows)
        try:
            if only_new:
                con.execute(f"INSERT INTO {table} BY NAME SELECT d.* FROM derived_rows AS d "
                            "SEMI JOIN new_spans AS n USING (trace_id, span_id)")
            else:
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM derived_rows")
        finally:
            _unregister(con, "derived_rows")


def _normalise(con: duckdb.DuckDBPyConnection) -> None:
    """Derive the normalised rows that need other spans (forward.read rows need their parent
    forward, stage slices their request root; either may be stored already) from `new_spans`
    (see the headers of ingest/sql/*.sql). A batch without forward.read and forward spans has
    no read to derive (a waiting read needs its parent forward), and one without stage slices,
    new or waiting, no stage: those steps are skipped (each is some 10 statements a batch)."""
    if _scalar(con, "SELECT (SELECT count(*) FROM batch_read_targets) + (SELECT count(*) FROM batch_forwards)"):
        con.execute(_sql("read_targets"))
        if _scalar(con, "SELECT count(*) FROM read_pending_now"):
            con.execute(_sql("read_targets_pending"))
        con.execute(_sql("read_parents"))
        if _scalar(con, "SELECT count(*) FROM read_orphans"):
            con.execute(_sql("read_parents_stored"))
        con.register("read_rows_now", read_rows(con, "read_targets", "read_parents"))
        try:
            con.execute(_sql("normalise_reads"))
        finally:
            _unregister(con, "read_rows_now")

    con.execute(_sql("stage_targets"))
    if _scalar(con, "SELECT count(*) FROM stage_pending_now"):
        con.execute(_sql("stage_targets_pending"))
    if not _scalar(con, "SELECT count(*) FROM stage_targets"):
        return
    con.execute(_sql("stage_walk_batch"))
    if _scalar(con, "SELECT count(*) FROM stage_targets WHERE was_pending") or _scalar(
        con, "SELECT count(*) FROM stage_walk_out WHERE NOT resolved"
    ):
        con.execute(_sql("stage_universe_stored"))
        con.register("stage_walk_more", walk_stages(con, "stage_walk_in", "stage_universe"))
        try:
            con.execute(_sql("stage_walk_stored"))
        finally:
            _unregister(con, "stage_walk_more")
    con.execute(_sql("normalise_stages"))


def _unregister(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop a registered Arrow table. In a transaction a failed statement aborted, DuckDB refuses
    this too; that refusal must not replace the error that aborted it (a later register of the
    same name replaces the view anyway)."""
    with contextlib.suppress(duckdb.Error):
        con.unregister(name)
