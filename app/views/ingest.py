"""Ingest: upload trace files into the store (only under `kvtrace app --allow-ingest`); the ingested
files and the quarantine."""

from __future__ import annotations

import streamlit as st

from kvtrace.app.data import ingest_files
from kvtrace.app.escape import md, md_code
from kvtrace.app.ui import cached, db_path, ingest_allowed, section, store
from kvtrace.ingest import IngestError

st.title("Ingest")

if not ingest_allowed():
    st.info("This app is read-only: uploading and ingesting files is off. Start it with "
            "`kvtrace app --allow-ingest` to ingest uploaded files into the store from here, or run "
            "`kvtrace ingest PATH` in a terminal.", icon=":material/lock:")
else:
    uploads = st.file_uploader(
        "OTLP trace files (JSON, JSON lines or protobuf; .gz / .zst accepted)",
        accept_multiple_files=True, key="ingest_upload",
    )
    if uploads and st.button("Ingest into the store", key="ingest_go", type="primary"):
        try:
            # the uploads' temporary folder is removed when the ingest ends, also when it fails
            with ingest_files.saved_uploads((f.name, f.getvalue()) for f in uploads) as paths, \
                    st.spinner(f"ingesting {len(paths)} file(s) into {md_code(db_path())}"):
                result = ingest_files.ingest_uploads(db_path(), paths)
        except IngestError as exc:
            st.error(f"ingest failed: {md(str(exc).splitlines()[0])}")  # the message may quote the file
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
    if by_reason.is_empty():
        st.success("no quarantined records")
    else:
        st.dataframe(by_reason, hide_index=True, key="ingest_quarantine_reasons")
        st.dataframe(cached(ingest_files.quarantine), hide_index=True, key="ingest_quarantine")
