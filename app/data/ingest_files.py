"""Ingest page: the files ingested so far, the quarantine, and uploads through the ingest library."""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import polars as pl

from kvtrace.app.data.common import INGEST_HINT, require
from kvtrace.app.store import Store
from kvtrace.ingest import IngestSummary, ingest_paths

QUARANTINE_ROWS = 500


def files(store: Store) -> pl.DataFrame:
    require(store, "ingested_files", INGEST_HINT)
    return store.frame(
        """
        SELECT file_id, path, format, compression, spans_read, spans_new, quarantined, size_bytes, ingested_at
        FROM ingested_files ORDER BY file_id DESC LIMIT 1000
        """
    )


def quarantine(store: Store) -> pl.DataFrame:
    """The latest quarantined records with a readable preview of their bytes."""
    require(store, "quarantine", INGEST_HINT)
    return store.frame(
        """
        SELECT source, line, byte_offset, span_id, reason,
               left(decode(raw), 200) AS preview, raw_bytes, quarantined_at
        FROM quarantine ORDER BY quarantined_at DESC, source, line LIMIT $cap
        """,
        {"cap": QUARANTINE_ROWS},
    )


def quarantine_by_reason(store: Store) -> pl.DataFrame:
    require(store, "quarantine", INGEST_HINT)
    return store.frame(
        "SELECT reason, count(*) AS records, count(DISTINCT source) AS files FROM quarantine GROUP BY reason ORDER BY records DESC"
    )


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
UPLOAD_PREFIX = "kvtrace-upload-"


def save_uploads(uploads: Iterable[tuple[str, bytes]], folder: Path) -> list[Path]:
    """Write uploaded (name, bytes) pairs into `folder`, names sanitised and unique; returns the paths."""
    paths: list[Path] = []
    for name, data in uploads:
        safe = _SAFE_NAME.sub("_", Path(name).name).lstrip(".") or "upload"
        path, n = folder / safe, 1
        while path.exists():  # two uploads of one name: keep both
            path, n = folder / f"{n}-{safe}", n + 1
        path.write_bytes(data)
        paths.append(path)
    return paths


@contextlib.contextmanager
def saved_uploads(uploads: Iterable[tuple[str, bytes]]) -> Iterator[list[Path]]:
    """The uploads written to a private temporary folder (mode 0700) that is removed when the block
    ends, whether the ingest in it succeeded or raised."""
    with tempfile.TemporaryDirectory(prefix=UPLOAD_PREFIX) as folder:
        yield save_uploads(uploads, Path(folder))


def ingest_uploads(db: Path, paths: list[Path]) -> IngestSummary:
    """Ingest `paths` into the store at `db` with the ingest library: the app's only write path.

    Raises `IngestError`, e.g. when another process holds the store for writing (DuckDB allows
    one writer process).
    """
    return ingest_paths(paths, db, progress=False)


def describe(summary: IngestSummary) -> str:
    """One line for a person: what the upload stored."""
    return (f"{summary.files_ingested} file(s) ingested ({summary.files_skipped} unchanged, skipped): "
            f"{summary.spans_read:,} spans read, {summary.spans_new:,} new, {summary.quarantined:,} quarantined; "
            f"the store now holds {summary.store_spans:,} spans")
