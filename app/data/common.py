"""What the data functions share: the missing-table message and time helpers."""

from __future__ import annotations

from kvtrace.app.store import Store


class MissingTable(Exception):
    """A page needs a table the store does not have yet; the message says which command makes it."""

    def __init__(self, table: str, command: str) -> None:
        self.table = table
        self.command = command
        super().__init__(f"this view needs the `{table}` table, which is not in the store yet: run `{command}`")


ANALYZE_HINT = "kvtrace analyze --db {db}"
INGEST_HINT = "kvtrace ingest PATH --db {db}"
REPLAY_HINT = "kvtrace replay run PLAN --device cpu --db {db}"


def require(store: Store, table: str, hint: str = ANALYZE_HINT) -> None:
    """Raise MissingTable unless `table` exists in the store's current snapshot."""
    if not store.has_table(table):
        raise MissingTable(table, hint.format(db=store.source))


def first_present(store: Store, *tables: str, hint: str = ANALYZE_HINT) -> str:
    """The first of `tables` that exists (analyses may name a result either way), else MissingTable."""
    for table in tables:
        if store.has_table(table):
            return table
    raise MissingTable(tables[0], hint.format(db=store.source))


def columns(store: Store, table: str) -> list[str]:
    frame = store.frame(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = $t ORDER BY column_index", {"t": table}
    )
    return [str(c) for c in frame["column_name"]]
