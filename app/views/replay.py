"""Replay: pick a finding, run the CPU replay of its window, or show stored GPU results."""

from __future__ import annotations

import streamlit as st

from kvtrace.app import charts
from kvtrace.app.data import findings, replay
from kvtrace.app.escape import md, md_code
from kvtrace.app.ui import cached, section

st.title("Replay")
st.caption("The CPU executor predicts what the recorded order does to the KV pages (as recorded) and "
           "what the fix's synchronization does (fixed). GPU runs re-execute the plan on CUDA streams.")

with section():
    table = cached(findings.list_findings)
    if table.is_empty():
        st.info("no findings to replay")
    else:
        ids = list(table["finding_id"])
        kinds = dict(zip(table["finding_id"], table["kind"], strict=True))
        wanted = st.query_params.get("finding")
        picked = st.selectbox("finding", ids, index=ids.index(wanted) if wanted in ids else 0, key="replay_finding",
                              format_func=lambda i: f"{i} · {kinds[i]}")
        if st.button("Run the CPU replay", key="replay_run", type="primary") or \
                st.session_state.get("replay_done") == picked:
            st.session_state["replay_done"] = picked
            result = cached(replay.cpu_replay, picked)
            st.caption(f"plan: {result.n_ops} ops, {result.num_layers} layers")
            cols = st.columns(len(replay.MODES))
            for col, mode in zip(cols, replay.MODES, strict=True):
                v = result.verdicts[mode]
                col.metric(mode, "corrupted" if v["corrupted"] else "clean",
                           help=f"{len(v['corrupted_pages'])} pages touched by a hazard")
                col.caption(f"late writes {v['n_late_writes']}, stale reads {v['n_stale_reads']}, "
                            f"foreign pages {v['n_foreign_pages']}; victim {md_code(v['victim_rid'])}")
            cells = replay.heatmap_cells(result, "as-recorded")
            if cells.is_empty():
                st.success("as recorded, the replay damages no page")
            else:
                st.markdown("**Corrupted pages, as recorded** (hazards per page and layer)")
                st.plotly_chart(charts.page_heatmap(cells, result.num_layers, replay.LAYER_ROWS), key="replay_heatmap")
            with st.expander("verdicts"):
                st.json(result.verdicts)

st.subheader("Stored replay runs (GPU and CPU)")
with section():
    finding = st.session_state.get("replay_finding")
    only_this = st.toggle("only the chosen finding", value=True, key="replay_only_finding")
    runs = cached(replay.stored_runs, finding if only_this else None)
    if runs.is_empty():
        st.info("no stored runs" + (f" for finding {md(finding)}" if only_this and finding else ""))
    else:
        st.dataframe(runs, hide_index=True, key="replay_stored_runs")
        damaged = replay.stored_heatmap_cells(runs)
        if damaged.is_empty():
            st.success("no stored run damaged a page")
        else:
            st.markdown("**Damaged pages per stored run**")
            st.plotly_chart(charts.page_heatmap(damaged, row_title=replay.STORED_ROWS), key="replay_stored_heatmap")
