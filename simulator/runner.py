"""Run a scenario end to end: knobs -> model -> OTLP files (SDK or fast path) + labels.json."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from kvtrace.simulator.config import (
    PAGE_FORMATS,
    PROFILES,
    SAMPLE_PROFILE,
    Knobs,
    SimulatorError,
    scenario_knobs,
)
from kvtrace.simulator.fastpath import FastJsonSink
from kvtrace.simulator.labels import write_labels
from kvtrace.simulator.model import ClusterModel, Instance, Request, RunResult, id_stream
from kvtrace.simulator.otlp_sdk import FORMATS, SdkSink
from kvtrace.simulator.outputs import draw_accept_prob, sample_steps
from kvtrace.simulator.records import CountingSink, SpanSink
from kvtrace.simulator.stock import StockSglangSink, check_stock_options

MODES = ("sdk", "fast", "labels-only")


def build_knobs(scenario: str, overrides: dict[str, Any], profile: str = "realistic") -> Knobs:
    """The scenario's preset, then the profile's fields, then the given (non-None) fields; validated."""
    if profile not in PROFILES:
        raise SimulatorError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    knobs = scenario_knobs(scenario)
    given = {k: v for k, v in overrides.items() if v is not None}
    if profile == "sample" and scenario != "pr35049":
        given = {**SAMPLE_PROFILE, **given}
    unknown = set(given) - set(knobs.public_dict())
    if unknown:
        raise SimulatorError(f"unknown knob(s): {', '.join(sorted(unknown))}")
    if scenario == "pr35049" and given:
        raise SimulatorError("pr35049 replays the logged case exactly; it takes no knobs but --seed/--out/--format")
    return replace(knobs, **given).validate()


def default_page_format(scenario: str, profile: str) -> str:
    """`ranges` for the realistic profile (pr35049 aside: it replays the logged case whatever the
    profile), `ids` for everything else, so the committed sample_traces/ keep kv.page_ids."""
    return "ranges" if profile == "realistic" and scenario != "pr35049" else "ids"


def simulate(scenario: str, seed: int, out_dir: Path | None, overrides: dict[str, Any] | None = None,
             fmt: str = "json", mode: str = "sdk", profile: str = "realistic", *, stock_only: bool = False,
             stock_resources: str = "configured", stock_trace_level: int = 3,
             page_format: str | None = None) -> RunResult:
    """Simulate `scenario` and write `<out>/<instance>.otlp.jsonl|.pb` and `<out>/labels.json`.

    mode: `sdk` (opentelemetry-sdk), `fast` (direct JSON encoder, same bytes), `labels-only`
    (no span files, only labels.json and the counts; for measuring rates over many requests).
    stock_only: write what stock SGLang 0.5.23 emits (`--enable-trace --trace-modules
    request,mooncake`) instead of the kvtrace conventions, from the same model run (labels.json is
    unchanged); stock_resources `configured` (OTEL_RESOURCE_ATTRIBUTES set by the operator) or
    `unconfigured` (service.name "sglang" and a random service.instance.id per process);
    stock_trace_level is SGLANG_TRACE_LEVEL (1-3, SGLang's default 3). See simulator.stock.
    page_format: how kv.* spans give their pages, `ids` (kv.page_ids) or `ranges` (kv.page_ranges);
    None is default_page_format(scenario, profile). Both give the same model run and labels.json.
    """
    if fmt not in FORMATS:
        raise SimulatorError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if mode not in MODES:
        raise SimulatorError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if page_format is None:
        page_format = default_page_format(scenario, profile)
    if page_format not in PAGE_FORMATS:
        raise SimulatorError(f"unknown page format {page_format!r}; choose one of {', '.join(PAGE_FORMATS)}")
    if mode == "fast" and fmt != "json":
        raise SimulatorError("the fast path writes OTLP JSON only; drop --format protobuf or --fast")
    if stock_only:
        if mode == "labels-only":
            raise SimulatorError("stock-only mode writes spans; it has no effect with labels-only")
        check_stock_options(stock_resources, stock_trace_level)
    knobs = build_knobs(scenario, overrides or {}, profile)
    sink: SpanSink | None = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in [*out_dir.glob("*.otlp.jsonl"), *out_dir.glob("*.otlp.pb")]:
            old.unlink()
    if mode == "sdk":
        sink = SdkSink(_need(out_dir), fmt)
    elif mode == "fast":
        sink = FastJsonSink(_need(out_dir))
    stock: StockSglangSink | None = None
    if stock_only and sink is not None:
        sink = stock = StockSglangSink(sink, knobs, scenario, seed, resources=stock_resources,
                                       trace_level=stock_trace_level)
    if scenario == "pr35049":
        result = run_pr35049(knobs, seed, sink if sink is not None else CountingSink(), page_format)
    else:
        result = ClusterModel(knobs, seed, sink, scenario, page_format=page_format).run()
    if stock is not None:
        result.stock_spans_by_version = stock.spans_by_version
    if out_dir is not None:
        write_labels(out_dir, result)
    return result


def _need(out_dir: Path | None) -> Path:
    if out_dir is None:
        raise SimulatorError("writing spans needs an output directory")
    return out_dir


def run_pr35049(knobs: Knobs, seed: int, sink: SpanSink, page_format: str = "ids") -> RunResult:
    """The case logged in SGLang PR #35049, on literal timestamps (time base 0, clocks in sync).

    Request A's pages [14..44] are written from 878.80 s to 884.80 s; A times out and is freed
    with mode=immediate at 881.28 s; request B allocates [1..32] at 881.31 s. Overlap [14..32],
    unsafe from 881.31 s to 884.80 s; B comes out garbled. A third request C held [1..13] before
    (it finished at 880.50 s), which is why B's allocation starts at page 1: the logged allocator
    sorts its free list when it merges released pages.
    """
    model = ClusterModel(knobs, seed, sink, "pr35049", page_format=page_format)
    model.prefills, model.decodes = model._fresh_state(knobs.phases[0])
    model.phase = knobs.phases[0]
    pre, dec = model.prefills[0], model.decodes[0]
    names = id_stream("names", "pr35049", seed)
    c = _scripted(model, names, 0, pre, dec, arrive=869.90, prealloc=869.905, prompt=500, out_tokens=300,
                  dec_pages=(1, 14), pre_pages=(1, 9), fwd=(869.907, 870.10), tx=(870.10, 870.15),
                  decode=(870.16, 880.50))
    a = _scripted(model, names, 1, pre, dec, arrive=878.60, prealloc=878.70, prompt=1974, out_tokens=200,
                  dec_pages=(14, 45), pre_pages=(1, 32), fwd=(878.61, 878.80), tx=(878.80, 884.80), decode=None)
    b = _scripted(model, names, 2, pre, dec, arrive=881.305, prealloc=881.31, prompt=2028, out_tokens=300,
                  dec_pages=(1, 33), pre_pages=(32, 64), fwd=(881.32, 881.45), tx=(881.45, 881.60),
                  decode=(881.61, None), out_pages=(45, 50), state="garbled")
    a.t_abort = a.t_dec_free = 881.28
    a.free_mode = "immediate"
    model._record_bug1(a, b, b.dec_runs, a.tx_end, b.t_decode_end)
    for req in (c, a, b):
        model._emit_request(req)
    for t, running in ((875.0, [c]), (883.0, [b]), (886.0, [b])):
        model.now = t
        dec.running = {r.rid: r for r in running}
        model._decode_tick(dec)
    model._heap.clear()
    sink.close()
    return RunResult(knobs, "pr35049", seed, model.instances, model.races, [c, a, b], model.spans_by_version)


def _scripted(model: ClusterModel, names: random.Random, index: int, pre: Instance, dec: Instance, *,
              arrive: float, prealloc: float, prompt: int, out_tokens: int, dec_pages: tuple[int, int],
              pre_pages: tuple[int, int], fwd: tuple[float, float], tx: tuple[float, float],
              decode: tuple[float, float | None] | None,
              out_pages: tuple[int, int] | None = None, state: str = "ok") -> Request:
    k = model.k
    req = Request(index=index, rid=f"{names.getrandbits(128):032x}", room=names.getrandbits(63) or 1, session=0,
                  phase=model.phase, prompt=prompt, cached=0, loaded=0, out_tokens=out_tokens, t_arrive=arrive)
    req.prefill, req.decode = pre, dec
    req.t_prealloc = prealloc
    req.dec_runs = [dec_pages]
    req.pre_runs = [pre_pages]
    req.t_enqueue = req.t_issue = arrive + 0.001
    req.fwd_start, req.fwd_end = fwd
    per_layer = (fwd[1] - fwd[0]) / k.layers
    req.reads = {"kv": [fwd[0] + (i + 0.08) * per_layer for i in range(k.layers)]}
    req.batch_id = f"{pre.id}-b{index + 1}"
    req.tx_start, req.tx_end = tx
    req.tx_bytes = {"kv": prompt * k.kv_bytes_per_token_layer * k.layers}
    req.state = state
    if decode is not None:
        start, end = decode
        req.t_transferred = tx[1] + 0.003
        req.t_decode_start = req.t_out_alloc = start
        req.out_runs = [out_pages] if out_pages else []
        req.accepted = sample_steps(model.seed, index, draw_accept_prob(model.rng, state), out_tokens, k.draft_tokens)
        req.step_s = 0.03 if end is None else (end - start) / len(req.accepted)
        req.t_decode_end = req.t_dec_free = start + len(req.accepted) * req.step_s
    return req
