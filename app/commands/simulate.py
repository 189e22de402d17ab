"""`kvtrace simulate`: write a simulated PD/HiCache cluster's OTLP traces and their ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kvtrace.simulator.config import PAGE_FORMATS, PROFILES, SCENARIOS, SimulatorError
from kvtrace.simulator.labels import summarize
from kvtrace.simulator.model import RunResult
from kvtrace.simulator.otlp_sdk import FORMATS
from kvtrace.simulator.stock import RESOURCE_MODES, STOCK_SGLANG_VERSION

# (option, knob field, type, help). Unset options keep the scenario's preset (docs/simulator.md).
_KNOB_OPTIONS: tuple[tuple[str, str, Any, str], ...] = (
    ("--requests", "requests", click.IntRange(1), "Requests to issue, all phases together."),
    ("--concurrency", "concurrency", click.IntRange(1), "Agent sessions in the closed loop (requests in flight)."),
    ("--prefill", "prefill", click.IntRange(1), "Prefill instances, one host each."),
    ("--decode", "decode", click.IntRange(1), "Decode instances, one host each."),
    ("--tp", "tp", click.IntRange(1), "TP ranks per instance (each with its own kv / index_k pools)."),
    ("--layers", "layers", click.IntRange(1), "Transformer layers (length of the per-layer offset arrays)."),
    ("--pools", "pools", str, "KV pools: 'kv,index_k' (sparse attention, both bugs) or 'kv'."),
    ("--mean-context", "mean_context", click.IntRange(1), "Mean prompt length in tokens (log-normal, long tail)."),
    ("--max-context", "max_context", click.IntRange(1), "Prompt length cap in tokens."),
    ("--mean-output", "mean_output_tokens", click.IntRange(1), "Mean completion length in tokens."),
    ("--think-time-s", "think_time_s", click.FloatRange(0), "Mean pause of a session between requests."),
    ("--l2-hit-prob", "l2_hit_prob", click.FloatRange(0, 1), "Chance a cached prefix is in host memory (HiCache load)."),
    ("--clock-skew-ms", "clock_skew_ms", click.FloatRange(0), "Std dev of each host's clock offset (0 = in sync)."),
    ("--transfer-timeout-s", "transfer_timeout_s", click.FloatRange(0, min_open=True),
     "Bug 1 rate knob: decode aborts a transfer in flight this long."),
    ("--rdma-stall-rate", "rdma_stall_rate", click.FloatRange(0),
     "Bug 1 rate knob: RDMA stall hazard per transfer-second per other active transfer."),
    ("--rdma-stall-min-s", "rdma_stall_min_s", click.FloatRange(0, min_open=True),
     "Bug 1 rate knob: shortest RDMA stall (Pareto scale)."),
    ("--rdma-gbps", "rdma_gbps", click.FloatRange(0, min_open=True), "NIC bandwidth of a prefill rank (Gbit/s)."),
    ("--hicache-stall-rate", "hicache_stall_rate", click.FloatRange(0),
     "Bug 2 rate knob: host->GPU load stall hazard per load-second per other active DMA stream."),
    ("--hicache-stall-min-ms", "hicache_stall_min_ms", click.FloatRange(0, min_open=True),
     "Bug 2 rate knob: shortest load stall (Pareto scale)."),
    ("--client-abort-prob", "client_abort_prob", click.FloatRange(0, 1),
     "Bug 3 rate knob: chance a client disconnects during its prefill forward (offload-race)."),
    ("--pcie-gbps", "pcie_gbps", click.FloatRange(0, min_open=True), "Host->GPU load bandwidth of a rank (Gbit/s)."),
    ("--feedback-prob", "feedback_prob", click.FloatRange(0, 1), "Chance a bad output gets a `feedback` span."),
    ("--completion-chars", "completion_chars", click.IntRange(0), "Cut gen_ai.completion to this many characters (0 = omit)."),
    ("--decode-trace-ms", "decode_trace_ms", click.FloatRange(0), "Period of traced decode `forward` steps (0 = none)."),
)


def _knob_options(func: Any) -> Any:
    for flag, _field, kind, text in reversed(_KNOB_OPTIONS):
        func = click.option(flag, _field, type=kind, default=None, help=text)(func)
    return func


@click.command(name="simulate")
@click.option("--scenario", type=click.Choice(SCENARIOS), default="mixed", show_default=True,
              help="Named scenario: its preset knobs and which builds (service.version) run.")
@click.option("--profile", type=click.Choice(PROFILES), default="sample", show_default=True,
              help="sample: small cluster, short contexts, raised race rates (a few MB, races in a few dozen "
                   "requests); realistic: 4P+4D, 256 sessions, ~70K-token contexts, the calibrated rates. "
                   "Options given explicitly override the profile.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed; the same seed gives identical bytes.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory for <instance>.otlp.jsonl (or .otlp.pb) and labels.json. Required "
                   "unless --labels-only is given without it.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="json", show_default=True,
              help="json: OTLP JSON lines as a Collector file exporter writes; protobuf: length-delimited TracesData.")
@click.option("--page-format", type=click.Choice(PAGE_FORMATS), default=None,
              help="How kv.* spans give their pages: ids = kv.page_ids (every page id, trace contract v1); "
                   "ranges = kv.page_ranges (inclusive [first, last] runs flattened, v2). Default: ranges with "
                   "--profile realistic, ids otherwise (and for pr35049). Same model run and labels either way.")
@click.option("--fast", is_flag=True, help="Encode OTLP JSON directly (same bytes as the SDK path, several times faster).")
@click.option("--labels-only", is_flag=True,
              help="Statistics mode: run the model, write only labels.json (if --out) and the summary.")
@click.option("--stock-only", is_flag=True,
              help=f"Write only what stock SGLang {STOCK_SGLANG_VERSION} emits with --enable-trace --trace-modules "
                   "request,mooncake (request roots, thread spans, stage slices, mooncake Sender traces; no kv.*, "
                   "forward, hicache.load, request.abort or spec.* spans/attributes), from the same model run: "
                   "labels.json is identical to the default mode's.")
@click.option("--stock-resources", type=click.Choice(RESOURCE_MODES), default="configured", show_default=True,
              help="With --stock-only: configured = the operator set OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES "
                   "(host.name, service.instance.id, sglang.role, service.version); unconfigured = service.name "
                   "'sglang' and the SDK's random service.instance.id per process.")
@click.option("--stock-trace-level", type=click.IntRange(1, 3), default=3, show_default=True,
              help="With --stock-only: SGLANG_TRACE_LEVEL (3, SGLang's default, adds fake_output and one "
                   "decode_loop span per decode step; 1 drops api_server_dispatch and mooncake_worker_send_session).")
@_knob_options
def simulate_command(scenario: str, profile: str, seed: int, out: Path | None, fmt: str, page_format: str | None,
                     fast: bool, labels_only: bool, stock_only: bool, stock_resources: str, stock_trace_level: int,
                     **knobs: Any) -> None:
    """Simulate a PD-disaggregated SGLang cluster with HiCache and write its OTLP traces + labels.

    Spans go through the real opentelemetry-sdk (one TracerProvider per instance) into one file
    per instance; the ground truth (injected races, every request's true output state) goes to
    labels.json beside them. Prints requests, spans and the true anomaly rate per service.version.

    Example:

        kvtrace simulate --scenario mixed --seed 7 --out traces/

        kvtrace simulate --scenario mixed --profile realistic --requests 90000 --labels-only

        kvtrace simulate --scenario pd-abort-race --seed 2 --stock-only --out traces-stock/
    """
    from kvtrace.simulator.runner import simulate

    if fast and labels_only:
        raise click.ClickException("--fast and --labels-only exclude each other")
    if out is None and not labels_only:
        raise click.ClickException("--out is required (or use --labels-only)")
    if stock_only and labels_only:
        raise click.ClickException("--stock-only and --labels-only exclude each other (labels-only writes no spans)")
    if not stock_only and (stock_resources != "configured" or stock_trace_level != 3):
        raise click.ClickException("--stock-resources and --stock-trace-level need --stock-only")
    if knobs.get("pools") is not None:
        knobs["pools"] = tuple(p.strip() for p in knobs["pools"].split(",") if p.strip())
    mode = "labels-only" if labels_only else "fast" if fast else "sdk"
    try:
        result = simulate(scenario, seed, out, knobs, fmt, mode, profile, stock_only=stock_only,
                          stock_resources=stock_resources, stock_trace_level=stock_trace_level,
                          page_format=page_format)
    except SimulatorError as err:
        raise click.ClickException(str(err)) from err
    click.echo(render_summary(result))
    if out is not None:
        click.echo(f"wrote {out}/ (labels: {out}/labels.json)")


def render_summary(result: RunResult) -> str:
    rows = summarize(result)
    head = f"{'service.version':<16} {'requests':>9} {'spans':>10} {'aborted':>8} {'races':>7} {'anomalies':>9} {'per 10k':>8}"
    k = result.knobs
    lines = [f"scenario {result.scenario}, seed {result.seed}: {k.prefill}P+{k.decode}D, TP {k.tp}, "
             f"{k.concurrency} sessions, mean context {k.mean_context} tokens", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.version:<16} {r.requests:>9} {r.spans:>10} {r.aborted:>8} {r.races:>7} "
                     f"{r.anomalies:>9} {r.rate_per_10k:>8.2f}")
    if result.stock_spans_by_version is not None:
        written = sum(result.stock_spans_by_version.values())
        lines.append(f"stock-only: wrote {written} stock SGLang {STOCK_SGLANG_VERSION} spans (the spans column, like "
                     "labels.json, counts the model's kvtrace-convention spans)")
    return "\n".join(lines)


commands: list[click.Command] = [simulate_command]
