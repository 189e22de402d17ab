"""GPU replay on real hardware (marked `gpu`: skipped without CUDA), and the torch tensor paths on CPU.

The CPU-torch test runs the GPU executor's tensor code serially in the CPU executor's order, so a
wrong index or tag layout fails here even on a machine without a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvtrace.replay.cpu import predict, run_cpu
from kvtrace.replay.examples import pr35049_plan, read_before_load_plan, synthetic_plan
from kvtrace.replay.plan import compile_plan, save_plan
from kvtrace.replay.verdict import judge

torch = pytest.importorskip("torch")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("make", [pr35049_plan, read_before_load_plan, lambda: synthetic_plan(200, seed=1)])
def test_torch_tensor_paths_agree_with_cpu_executor(make):
    from kvtrace.replay.gpu import replay_serial

    plan = make()
    clean = predict(plan, "fixed")[0]
    for mode in ("as-recorded", "fixed"):
        got = judge(plan, replay_serial(plan, mode, "cpu"), clean)
        want = run_cpu(plan, mode).verdict
        assert got.signature() == want.signature()
        assert got.misplaced == []
        assert got.summary()["divergence"] == want.summary()["divergence"]


@pytest.mark.gpu
@cuda
def test_pr35049_on_gpu_corrupts_as_recorded_and_not_fixed():
    from kvtrace.replay.gpu import Replayer
    from kvtrace.replay.run import auto_time_scale
    from kvtrace.replay.timing import device_timing

    plan = pr35049_plan()
    rp = Replayer(plan, "cuda")
    scale = auto_time_scale(plan)
    clean = predict(plan, "fixed")[0]
    for mode, damaged in (("as-recorded", list(range(14, 33))), ("fixed", [])):
        dt = device_timing(plan, mode, scale)
        for _ in range(3):
            run = rp.run(dt.program, 1.0, dt.lane_end_ns)
            v = judge(plan, run.obs, clean)
            assert v.damaged_pages() == damaged
            assert v.claims() == run_cpu(plan, mode).verdict.claims()
            assert not run.timing["gate_overrun"]


@pytest.mark.gpu
@cuda
def test_read_before_load_on_gpu_reads_stale_layers_2_and_3_only_as_recorded():
    from kvtrace.replay.gpu import Replayer
    from kvtrace.replay.run import auto_time_scale
    from kvtrace.replay.timing import device_timing

    plan = read_before_load_plan()
    rp = Replayer(plan, "cuda")
    clean = predict(plan, "fixed")[0]
    verdicts = {}
    for mode in ("as-recorded", "fixed"):
        dt = device_timing(plan, mode, auto_time_scale(plan))
        verdicts[mode] = judge(plan, rp.run(dt.program, 1.0, dt.lane_end_ns).obs, clean)
    assert verdicts["as-recorded"].summary()["stale_layers"] == [2, 3]
    assert verdicts["fixed"].stale_reads == []


def _csan(tmp_path, plan):
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    env = {**os.environ, "TORCH_CUDA_SANITIZER": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "kvtrace.replay.run", str(path), "--device", "cuda", "--csan-child"],
        env=env, capture_output=True, text=True, timeout=300, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])[str(path)]


@pytest.mark.gpu
@cuda
def test_cuda_sanitizer_flags_as_recorded_and_passes_fixed(tmp_path):
    res = _csan(tmp_path, pr35049_plan())
    assert res["as-recorded/cell"]["reports"] > 0
    assert res["fixed/cell"]["reports"] == 0


@pytest.mark.gpu
@cuda
def test_cuda_sanitizer_is_clean_on_a_fixed_window_with_several_compute_lanes(tmp_path):
    """Overlapping forward steps put one rank's compute actor on several lanes (streams); the fix's
    and the scheduler's orderings must reach CSAN as events between them too. What CSAN flags as
    recorded lies on cells that the happens-before analysis predicts."""
    from kvtrace.replay.timing import unordered_conflicts

    plan = synthetic_plan(40, seed=1, races=1)
    lanes = {lane.rsplit("#", 1)[0] for lane in compile_plan(plan, "fixed").lanes if lane.endswith("#1")}
    assert "decode:decode-0/0" in lanes  # two compute lanes
    res = _csan(tmp_path, plan)
    assert res["fixed/cell"]["reports"] == 0
    predicted = {tuple(r.cell) for r in unordered_conflicts(plan, "as-recorded")}
    assert res["as-recorded/cell"]["reports"] > 0
    assert {tuple(c) for c in res["as-recorded/cell"]["cells"]} <= predicted
