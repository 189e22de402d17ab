"""SQL: a read-only console over the store, with the analyses as ready examples."""

from __future__ import annotations

import streamlit as st

from kvtrace.app.data import sql_console
from kvtrace.app.safe_sql import QueryError
from kvtrace.app.ui import cached, section, store

st.title("SQL console")
st.caption("Read-only: one SELECT (or EXPLAIN [ANALYZE] of one) at a time, no file, network or extension "
           f"access, a time and a memory limit, and at most {sql_console.CONSOLE_MAX_ROWS:,} rows shown; "
           "lists, structs and other nested values are shown as text.")

with section():
    examples = cached(sql_console.examples)
    titles = [e.title for e in examples]
    choice = st.selectbox("examples", titles, index=0, key="sql_example")
    example = examples[titles.index(choice)]
    st.caption(example.description)
    linked = st.query_params.get("sql")  # a query's URL (?sql=...): loaded into the box once
    if linked and st.session_state.get("_sql_linked") != linked:
        st.session_state["_sql_linked"] = st.session_state["sql_query"] = linked
        st.session_state["sql_loaded"] = choice
    elif st.session_state.get("sql_loaded") != choice:
        st.session_state["sql_query"] = example.sql
        st.session_state["sql_loaded"] = choice
    sql = st.text_area("query", key="sql_query", height=220)
    if st.button("Run", key="sql_run", type="primary"):
        st.session_state["_sql_linked"] = st.query_params["sql"] = sql  # the query's URL; a link never runs it
        try:
            result = sql_console.run_console(store(), sql)
        except QueryError as exc:
            st.error(str(exc))
        else:
            note = f" ({result.note})" if result.note else f" (first {result.max_rows:,} shown)" if result.truncated else ""
            st.success(f"{len(result.frame):,} row(s){note} in {result.elapsed_s * 1000:.0f} ms")
            st.dataframe(result.frame, hide_index=True, key="sql_result")
