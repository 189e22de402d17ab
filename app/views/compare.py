"""Compare: two versions side by side by context-length bucket."""

from __future__ import annotations

import plotly.express as px
import polars as pl
import streamlit as st

from kvtrace.app.charts import plain_labels
from kvtrace.app.data import compare
from kvtrace.app.escape import plot_text
from kvtrace.app.ui import cached, section

st.title("Compare versions")

with section():
    versions = cached(compare.versions)
    if len(versions) < 1:
        st.info("no versions to compare")
    else:
        c1, c2 = st.columns(2)
        a = c1.selectbox("version A", versions, index=0, key="compare_a")
        b = c2.selectbox("version B", versions, index=len(versions) - 1, key="compare_b")
        table = cached(compare.side_by_side, a, b)
        st.dataframe(table, hide_index=True, key="compare_table",
                     column_config={"throughput_gain": st.column_config.NumberColumn(format="percent")})
        long = cached(compare.long_form, a, b)
        metric = st.selectbox("metric", compare.METRICS, index=0, key="compare_metric")
        chosen = plain_labels(long.filter(pl.col("metric") == metric))
        # the legend and the bars in the order A, B (plotly would take the order the rows come in)
        fig = px.bar(chosen, x="context_bucket", y="value", color="service_version", barmode="group",
                     category_orders={"context_bucket": [plot_text(bucket) for bucket in compare.BUCKET_ORDER],
                                      "service_version": [plot_text(v) for v in dict.fromkeys((a, b))]},
                     height=360)
        fig.update_layout(yaxis_title=plot_text(metric), xaxis_title="context length")
        st.plotly_chart(fig, key="compare_chart")
