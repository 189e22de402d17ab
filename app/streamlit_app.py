"""kvtrace investigation app: one entrypoint, pages under app/views/ (`kvtrace app --db FILE`)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from kvtrace.app.ui import sidebar_search, sidebar_status

HERE = Path(__file__).resolve().parent
PAGES = HERE / "views"

st.set_page_config(page_title="kvtrace", page_icon=":material/troubleshoot:", layout="wide")

navigation = st.navigation(
    {
        "Investigate": [
            st.Page(PAGES / "overview.py", title="Overview", icon=":material/dashboard:", default=True),
            st.Page(PAGES / "findings.py", title="Findings", icon=":material/report:"),
            st.Page(PAGES / "requests.py", title="Requests", icon=":material/search:"),
            st.Page(PAGES / "anomalies.py", title="Anomalies", icon=":material/insights:"),
            st.Page(PAGES / "compare.py", title="Compare", icon=":material/compare_arrows:"),
            st.Page(PAGES / "replay.py", title="Replay", icon=":material/replay:"),
        ],
        "Data": [
            st.Page(PAGES / "sql.py", title="SQL", icon=":material/terminal:"),
            st.Page(PAGES / "ingest.py", title="Ingest", icon=":material/upload_file:"),
        ],
    }
)
sidebar_search()
sidebar_status()
navigation.run()
