"""Replay: pick a finding, run the CPU replay of its window, or show stored GPU results."""

from __future__ import annotations

import streamlit as st

st.title("Replay")
st.info("The replay page lands with the replay library's plan builder.")
