"""Ingest: upload trace files into the store; the ingested files and the quarantine."""

from __future__ import annotations

import streamlit as st

from kvtrace.app.data import ingest_files
from kvtrace.app.ui import cached, db_path, section, store
from kvtrace.ingest import IngestError

st.title("Ingest")

uploads = st.file_uploader(
    "OTLP trace files (JSON, JSON lines or protobuf; .gz / .zst accepted)",
    accept_multiple_files=True, key="ingest_upload",
)
if uploads and st.button("Ingest into the store", key="ingest_go", type="primary"):
    paths = ingest_files.save_uploads((f.name, f.getvalue()) for f in uploads)
    try:
        with st.spinner(f"ingesting {len(paths)} file(s) into {db_path()}"):
            result = ingest_files.ingest_uploads(db_path(), paths)
    except IngestError as exc:
        st.error(f"ingest failed: {str(exc).splitlines()[0]}")
    else:
        st.success(ingest_files.describe(result))
        with section():
            store().refresh(force=True)

st.subheader("Ingested files")
with section():
    st.dataframe(cached(ingest_files.files), hide_index=True, key="ingest_files")

st.subheader("Quarantine")
with section():
    by_reason = cached(ingest_files.quarantine_by_reason)
    if by_reason.empty:
        st.success("no quarantined records")
    else:
        st.dataframe(by_reason, hide_index=True, key="ingest_quarantine_reasons")
        st.dataframe(cached(ingest_files.quarantine), hide_index=True, key="ingest_quarantine")
