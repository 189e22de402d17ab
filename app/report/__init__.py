"""`kvtrace report`: a self-contained HTML report (plotly, JS inline), a Markdown summary and the
findings as Parquet and JSON lines, all built from the analytics tables."""
