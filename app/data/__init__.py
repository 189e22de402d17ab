"""Query functions behind the app's pages: a Store in, DataFrames or small dataclasses out.

Each function aggregates in SQL and caps its rows, so a page stays fast on a large store; none
imports streamlit or plotly (pages cache and draw them), so they are tested headless.
"""
