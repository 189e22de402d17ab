"""Knobs of the simulated cluster and the named scenarios that preset them.

Every knob is a field of `Knobs`; docs/simulator.md says what each one does and which of them set
the anomaly rates. Scenarios are presets: the CLI overrides single fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

SCENARIOS: tuple[str, ...] = ("clean", "pd-abort-race", "hicache-race", "mixed", "pr35049", "offload-race")
PROFILES: tuple[str, ...] = ("sample", "realistic")
# How kv.* spans give their page set (docs/conventions.md): kv.page_ids (v1, every page id) or
# kv.page_ranges (v2, inclusive runs). An encoding, like --format, so not a Knobs field (labels.json
# does not change with it); the realistic profile writes ranges, every other run ids.
PAGE_FORMATS: tuple[str, ...] = ("ids", "ranges")

# The `sample` profile: a small cluster, short contexts and rate knobs raised far above the
# realistic ones, so that a few dozen requests hold several races in a few MB of OTLP JSON
# (what sample_traces/ and `make demo` use). `realistic` is the Knobs defaults.
SAMPLE_PROFILE: dict[str, object] = {
    "requests": 120, "prefill": 2, "decode": 2, "tp": 2, "layers": 8, "mean_context": 1536, "max_context": 8192,
    "mean_output_tokens": 120, "concurrency": 24, "think_time_s": 0.3, "completion_chars": 64,
    "decode_trace_ms": 4000.0, "transfer_timeout_s": 0.3, "rdma_stall_rate": 50.0, "rdma_stall_min_s": 0.1,
    "hicache_stall_rate": 400.0, "hicache_stall_min_ms": 5.0, "pcie_gbps": 200.0,
}


class SimulatorError(Exception):
    """Bad simulator input (unknown scenario, impossible knob values, pool exhausted)."""


@dataclass(frozen=True)
class Phase:
    """One deployed build: its `service.version` and which of the three bugs it still has."""

    version: str
    bug1_abort_free: bool  # decode frees aborted requests' pages immediately (bug 1 present)
    bug2_index_nowait: bool  # index_k accessors skip wait_until(layer) (bug 2 present)
    share: float = 1.0  # fraction of the run's requests served by this build
    # a host->GPU load into freshly allocated pages skips waiting for the compute stream, which may
    # still be reading them for the request that released them (vLLM #47282 / #47324: write-while-read)
    bug3_load_nowait_compute: bool = False


BEFORE_FIX = Phase("before-fix", True, True)
AFTER_FIX_1 = Phase("after-fix-1", False, True)
AFTER_FIX_2 = Phase("after-fix-2", True, False)
AFTER_BOTH = Phase("after-both", False, False)
BEFORE_LOAD_FIX = Phase("before-load-fix", False, False, bug3_load_nowait_compute=True)
AFTER_LOAD_FIX = Phase("after-load-fix", False, False)


@dataclass(frozen=True)
class Knobs:
    """All the parameters of a run. Times in seconds unless the name says otherwise."""

    # --- load -------------------------------------------------------------------------------
    requests: int = 2000  # requests to issue (all phases together)
    concurrency: int = 256  # closed loop: this many agent sessions, each one request at a time
    think_time_s: float = 1.5  # mean pause of a session between its requests (exponential)
    mean_context: int = 70_000  # mean prompt length in tokens (log-normal, long tail)
    context_sigma: float = 0.55  # log-normal shape of the prompt length
    max_context: int = 200_000  # prompt lengths are capped here
    min_context: int = 256
    new_token_frac: float = 0.08  # mean share of the prompt that is new (the rest is a prefix hit)
    prefix_hit_prob: float = 0.9  # chance a request has a cached prefix at all
    l2_hit_prob: float = 0.5  # chance that prefix sits in host memory (HiCache L2 -> hicache.load)
    mean_output_tokens: int = 400  # log-normal, capped at max_output_tokens
    max_output_tokens: int = 4096
    # --- cluster ----------------------------------------------------------------------------
    prefill: int = 4  # prefill instances (one host each)
    decode: int = 4  # decode instances (one host each)
    tp: int = 2  # TP ranks per instance; each rank has its own pools and allocator
    layers: int = 61  # transformer layers (per-layer load and read offsets)
    page_size: int = 64
    pools: tuple[str, ...] = ("kv", "index_k")
    kv_bytes_per_token_layer: int = 656  # MLA latent 512 + rope 64 (fp8) + scales, per layer
    index_k_bytes_per_token_layer: int = 132  # DSA indexer key 128 (fp8) + scale, per layer
    clock_skew_ms: float = 3.0  # std dev of each host's clock offset (0 = perfectly synced)
    rdma_gbps: float = 200.0  # NIC bandwidth of a prefill rank, shared by its transfers
    pcie_gbps: float = 400.0  # host->GPU bandwidth of a rank's load stream
    prefill_tokens_per_s: float = 20_000.0  # extend throughput of one prefill instance
    decode_step_ms: float = 28.0  # decode step at batch 1; grows with batch size
    decode_step_ms_per_req: float = 0.12
    draft_tokens: int = 4  # spec.draft_tokens (draft proposes draft_tokens - 1 per step)
    # --- bug 1: abort before write complete -------------------------------------------------
    transfer_timeout_s: float = 2.5  # decode gives up this long after the write was posted
    rdma_stall_rate: float = 0.0015  # stall hazard per transfer-second per request in flight per instance
    rdma_stall_min_s: float = 0.25  # stalls are Pareto: at least this long ...
    rdma_stall_alpha: float = 1.3  # ... with this tail index
    # --- bug 2: read before load ------------------------------------------------------------
    hicache_stall_rate: float = 0.0006  # stall hazard per load-second per request in flight per instance
    hicache_stall_min_ms: float = 20.0
    hicache_stall_alpha: float = 1.4
    sched_prep_ms: float = 2.0  # CPU batch preparation between load issue and forward start
    # --- bug 3: load overwrites pages still being read (offload-race) -------------------------
    client_abort_prob: float = 0.0  # chance a client disconnects during its prefill forward
    # --- consequences and observability -----------------------------------------------------
    garbled_share: float = 0.75  # a corrupted request is garbled with this chance, else repetition
    feedback_prob: float = 0.3  # chance a bad output gets a user `feedback` span
    ok_feedback_prob: float = 0.002  # chance a healthy output gets an `ok` feedback span
    completion_chars: int = 160  # gen_ai.completion is cut to this many characters (0 = omit)
    decode_trace_ms: float = 500.0  # one traced decode `forward` per instance per this period
    time_base_ns: int = 1_764_000_000_000_000_000  # true time of the run's start (Unix ns)
    phases: tuple[Phase, ...] = field(default=(BEFORE_FIX,))

    def validate(self) -> Knobs:
        """Return self, or raise SimulatorError naming the first impossible value."""
        positive = ("requests", "concurrency", "prefill", "decode", "tp", "layers", "page_size",
                    "mean_context", "max_context", "mean_output_tokens", "max_output_tokens")
        for name in positive:
            if getattr(self, name) <= 0:
                raise SimulatorError(f"{name} must be positive, got {getattr(self, name)}")
        if self.draft_tokens < 2:
            raise SimulatorError(f"draft_tokens must be >= 2, got {self.draft_tokens}")
        if self.clock_skew_ms < 0:
            raise SimulatorError(f"clock_skew_ms must be >= 0, got {self.clock_skew_ms}")
        if not self.phases:
            raise SimulatorError("a run needs at least one phase")
        for name in ("rdma_stall_rate", "hicache_stall_rate", "feedback_prob", "ok_feedback_prob", "client_abort_prob"):
            if getattr(self, name) < 0:
                raise SimulatorError(f"{name} must be >= 0, got {getattr(self, name)}")
        bad_pools = set(self.pools) - {"kv", "index_k"}
        if bad_pools or "kv" not in self.pools:
            raise SimulatorError(f"pools must be kv or kv,index_k, got {','.join(self.pools)}")
        return self

    def public_dict(self) -> dict[str, Any]:
        """The knobs as JSON-ready values, for labels.json."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "phases":
                value = [{"version": p.version, "bug1_abort_free": p.bug1_abort_free,
                          "bug2_index_nowait": p.bug2_index_nowait,
                          "bug3_load_nowait_compute": p.bug3_load_nowait_compute, "share": p.share} for p in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def scenario_knobs(scenario: str) -> Knobs:
    """The preset of a named scenario (pr35049 is scripted; its knobs only name the cluster)."""
    base = Knobs()
    if scenario == "clean":
        return replace(base, phases=(AFTER_BOTH,))
    if scenario == "pd-abort-race":
        return replace(base, phases=(AFTER_FIX_2,))
    if scenario == "hicache-race":
        return replace(base, phases=(AFTER_FIX_1,))
    if scenario == "mixed":
        return replace(base, phases=(replace(BEFORE_FIX, share=1 / 3), replace(AFTER_FIX_1, share=1 / 3),
                                     replace(AFTER_BOTH, share=1 / 3)))
    if scenario == "offload-race":
        return replace(base, client_abort_prob=0.1, phases=(replace(BEFORE_LOAD_FIX, share=0.5),
                                                            replace(AFTER_LOAD_FIX, share=0.5)))
    if scenario == "pr35049":
        return replace(base, prefill=1, decode=1, tp=1, pools=("kv",), clock_skew_ms=0.0, time_base_ns=0,
                       layers=8, phases=(BEFORE_FIX,), requests=4)
    raise SimulatorError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
