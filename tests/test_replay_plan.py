"""The plan format: round trip, clear errors naming file and entry, derived ordering edges."""

from __future__ import annotations

import json

import pytest

from kvtrace.replay.examples import pr35049_plan, read_before_load_plan
from kvtrace.replay.plan import Edge, PlanError, fix_edges, load_plan, plan_from_json, plan_to_json, save_plan


def test_plan_round_trips_through_json(tmp_path):
    plan = pr35049_plan()
    path = tmp_path / "p.json"
    save_plan(plan, path)
    again = load_plan(path)
    assert plan_to_json(again) == plan_to_json(plan)
    assert again.ops[2].info == {"free_mode": "immediate", "free_reason": "aborted"}


def test_recorded_edges_of_pr35049_are_the_ones_that_existed():
    assert pr35049_plan().edges == (
        Edge(0, 1, "alloc_before_write"),  # page indices sent to prefill after the prealloc
        Edge(0, 2, "alloc_before_use"),  # A released pages it had been allocated
        Edge(2, 3, "free_before_realloc"),  # B got pages 14..32 only once A's free returned them
    )


def test_fix_edges_make_the_free_wait_for_the_write_and_reads_wait_per_layer():
    assert fix_edges(pr35049_plan()) == [Edge(1, 2, "write_before_free")]
    rbl = fix_edges(read_before_load_plan())
    assert rbl == [Edge(1, 2, "layer_load_before_read", before_layer=k, after_layer=k) for k in range(4)]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=2), "version: this kvtrace reads plan version 1, got 2"),
        (lambda d: d["ops"][1].update(op="write"), "ops[1]: unknown op 'write'"),
        (lambda d: d["ops"][1].update(end_ns=0), "ops[1]: end_ns 0 is before start_ns"),
        (lambda d: d["ops"][0].pop("pages"), "ops[0]: missing `pages`"),
        (lambda d: d["edges"].append({"before": 0, "after": 99}), "edges[3]: `before` and `after` must name op ids"),
    ],
)
def test_bad_plans_name_the_file_and_the_entry(tmp_path, mutate, message):
    doc = plan_to_json(pr35049_plan())
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PlanError) as err:
        load_plan(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n "format": "kvtrace-replay-plan",\n oops\n}')
    with pytest.raises(PlanError, match=r"broken.json: line 3: not valid JSON"):
        load_plan(path)


def test_layer_offsets_must_match_the_layer_count():
    doc = plan_to_json(read_before_load_plan())
    doc["ops"][1]["layer_offsets_ns"] = [0, 1]
    with pytest.raises(PlanError, match=r"ops\[1\]: 2 layer offsets for 4 layers"):
        plan_from_json(doc, "x.json")


def test_executor_side_needs_only_the_standard_library():
    """The GPU host may have torch and nothing else: plan, CPU executor, sweep, minimize and the
    runner import without duckdb, polars, click, numpy or torch."""
    import subprocess
    import sys

    code = (
        "import sys, kvtrace.replay.plan, kvtrace.replay.cpu, kvtrace.replay.verdict, kvtrace.replay.sweep, kvtrace.replay.minimize, kvtrace.replay.run;"
        "bad = sorted(m for m in ('duckdb', 'polars', 'click', 'numpy', 'torch', 'pyarrow') if m in sys.modules);"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
