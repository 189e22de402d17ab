"""Streamlit glue shared by the pages: the store resource, cached data calls, error sections.

Pages stay thin: they call `cached(data_function, ...)` and draw. Cache keys include the store
snapshot's version, so every cache follows a refresh after an ingest. A value from a trace (or
from a message that may quote one) enters Markdown only through `md()` / `md_code()` (app/escape.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st

# the environment `kvtrace app` sets for this process (re-exported: pages and tests read them here)
from kvtrace.app.commands.app import ALLOW_INGEST_ENV as ALLOW_INGEST_ENV
from kvtrace.app.commands.app import DB_ENV as DB_ENV
from kvtrace.app.data.common import MissingTable
from kvtrace.app.escape import md, md_code
from kvtrace.app.options import DEFAULT_DB
from kvtrace.app.safe_sql import QueryError, StoreUnavailable
from kvtrace.app.store import Store

T = TypeVar("T")


def db_path() -> Path:
    return Path(os.environ.get(DB_ENV, DEFAULT_DB)).resolve()


def ingest_allowed() -> bool:
    """Whether the Ingest page may write uploads into the store: only under `kvtrace app --allow-ingest`."""
    return os.environ.get(ALLOW_INGEST_ENV) == "1"


@st.cache_resource(show_spinner=False)
def _open_store(db: str) -> Store:
    return Store(db)


def store() -> Store:
    """The process-wide snapshot store for the configured DB (raises StoreUnavailable)."""
    return _open_store(str(db_path()))


@st.cache_data(show_spinner=False, max_entries=1024, ttl=6 * 3600)
def _cached_call(_fn: Callable[..., Any], name: str, db: str, version: str, args: tuple[Any, ...]) -> Any:
    return _fn(_open_store(db), *args)


def cached(fn: Callable[..., T], *args: Any) -> T:
    """`fn(store, *args)`, cached per (function, store version, args)."""
    s = store()
    result: T = _cached_call(fn, f"{fn.__module__}.{fn.__qualname__}", str(s.source), s.version, args)
    return result


@contextlib.contextmanager
def section() -> Iterator[None]:
    """Show a missing table or a refused query as a message instead of a traceback."""
    try:
        yield
    except MissingTable as exc:
        st.info(f"{exc}", icon=":material/info:")
    except StoreUnavailable as exc:
        st.error(str(exc))
    except QueryError as exc:
        # DuckDB's message may quote a value from the store
        st.error(f"query failed: {md(exc)}")


def sidebar_search() -> None:
    """The search box on every page (sidebar): a rid, rid prefix, trace id, bootstrap room, finding
    id or incident id. A search that names one entity opens it (its URL: app/search.py); several
    are listed as links; none says so. `?q=` fills the box (a search's own URL)."""
    from kvtrace.app import search

    with st.sidebar:
        if "search_q" not in st.session_state and st.query_params.get("q"):
            st.session_state["search_q"] = st.query_params.get("q")  # a shared search lists, it does not jump
        text = st.text_input("Search", key="search_q", on_change=_search_submitted,
                             placeholder="rid, trace id, room, finding or incident id",
                             help="a rid or its first characters, a trace id (16 or 32 hex digits), a "
                                  "bootstrap room, a finding id or an incident id")
        if not text.strip():
            return
        try:
            hits = cached(search.resolve, text, 20)
        except (StoreUnavailable, QueryError, MissingTable) as exc:
            st.error(md(exc))
            return
        go = st.session_state.pop("_search_go", False)
        if not hits:
            st.warning(f"nothing in this store is {md_code(text.strip())}: no rid, rid prefix, trace id, "
                       "bootstrap room, finding id or incident id")
            return
        if go and len(hits) == 1:
            st.switch_page(hits[0].page, query_params=hits[0].query_params)
        if len(hits) > 1:
            st.query_params["q"] = text.strip()  # the list is the result: its URL
        st.caption(f"{len(hits)} match(es)" + (" (the first 20)" if len(hits) >= 20 else ""))
        for hit in hits:
            st.page_link(hit.page, label=md(search.describe(hit)), query_params=hit.query_params)


def _search_submitted() -> None:
    st.session_state["_search_go"] = True


def sidebar_status() -> None:
    """Which store, how old the snapshot is, and whether an ingest is writing to it now."""
    with st.sidebar:
        st.caption(f"store: {md_code(db_path())}")
        try:
            status = store().status()
        except StoreUnavailable as exc:
            st.error(str(exc))
            return
        st.caption(f"snapshot age: {_age(status.age_s)}", help="The app reads a private copy of the store, "
                   "refreshed when the file changes and no ingest is writing to it.")
        if status.writer_pid is not None:
            st.warning(f"ingest in progress (process {status.writer_pid}): showing the last snapshot", icon="⏳")
        elif status.stale:
            st.info("the store changed: the next query refreshes the snapshot")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def ns_to_text(ns: int | float | None) -> str:
    """Nanoseconds since the epoch as 'YYYY-MM-DD HH:MM:SS.mmm' (UTC); '-' for a missing value."""
    import datetime as dt
    import math

    if ns is None or (isinstance(ns, float) and math.isnan(ns)):
        return "-"
    seconds, rest = divmod(int(ns), 10**9)
    when = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    return f"{when:%Y-%m-%d %H:%M:%S}.{rest // 10**6:03d}"
