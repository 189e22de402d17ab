"""kvtrace's SGLang plugin: makes a real SGLang server emit the page-level spans of
`docs/conventions.md` (`kv.alloc`, `kv.free`, `kv.transfer`, `request.abort`, the `spec.*`
attributes on the root at finish, and at higher levels `forward`, `forward.read`, `hicache.load`).

SGLang loads it from its plugin entry-point group `sglang.srt.plugins` (name `kvtrace`; select it
with `SGLANG_PLUGINS=kvtrace` when several are installed) and calls `load()` in every process
that calls `sglang.srt.plugins.load_plugins()` (engine, scheduler, DP controller, detokenizer).
`load()` resolves each hook point by name, registers the ones that exist with SGLang's own
`HookRegistry` (which applies them right after), and logs which attached and which are missing.
A missing hook point (renamed in another release) costs only its spans, never the server.

Spans go out through SGLang's tracer (`--enable-trace --otlp-traces-endpoint ...`), as children
of SGLang's root span of the request, so they join SGLang's traces.

Knobs (environment, read at load):
- `KVTRACE_SGLANG_LEVEL`: `off`, `kv` (default: alloc/free/transfer/abort/spec), `forward`
  (+ `forward` per batch step, forward-time allocations, `hicache.load`), `read` (+ `forward.read`).
- `KVTRACE_SGLANG_SAMPLE`: fraction of requests (by a hash of the rid, so prefill, decode and every
  TP rank choose the same requests); the free of an aborted request and `request.abort` are kept.
- `KVTRACE_SGLANG_OUTPUT_TEXT=1`: put the output text on the root (`gen_ai.completion`); off by default.
- `KVTRACE_SGLANG_PEERS`: `ip[:port]=instance,...`: the decode instances' `service.instance.id`
  as the prefill sees their addresses (for `kv.transfer.dst_instance`).

This package imports only the standard library at load (see `_core`): it runs inside the server.
`python -m kvtrace.sglang_plugin --report` lists every hook point against the installed sglang.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
from typing import Any

from kvtrace.sglang_plugin import _core
from kvtrace.sglang_plugin._core import LEVEL_NAMES, STATS, Config, logger

__all__ = ["format_report", "load", "report", "resolve_all"]

_STATE: dict[str, Any] = {"loaded": False, "hooks": [], "config": None}


def _resolve(target: str, params: tuple[str, ...]) -> tuple[str, str, Any]:
    """(status, detail, signature): 'attached'-able when the target exists with the parameters
    the hook reads; 'missing' with the reason otherwise. Importing the target's module is what
    SGLang's own HookRegistry.apply_hooks would do."""
    obj_path, _, attr = target.rpartition(".")
    try:
        obj = pkgutil.resolve_name(obj_path)
    except Exception as exc:  # ImportError, AttributeError, or an error the module raised
        cause = _import_cause(obj_path) or exc
        return "missing", f"{obj_path} does not resolve ({type(cause).__name__}: {cause})".replace("\n", " ")[:300], None
    if not hasattr(obj, attr):
        return "missing", f"{obj_path} has no attribute {attr!r} (renamed or moved in this release?)", None
    fn = getattr(obj, attr)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return "attached", "", None
    absent = [p for p in params if p not in sig.parameters]
    if absent:
        return "missing", f"signature changed: no parameter {', '.join(absent)} in {attr}{sig}", None
    return "attached", "", sig


def _import_cause(obj_path: str) -> BaseException | None:
    """The error that stops the longest importable module prefix of `obj_path` from importing
    (pkgutil.resolve_name swallows it and reports a missing attribute instead)."""
    parts = obj_path.split(".")
    for i in range(len(parts), 0, -1):
        mod = ".".join(parts[:i])
        try:
            importlib.import_module(mod)
            return None
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                continue  # not a module: a class further down the path
            return exc
        except Exception as exc:
            return exc
    return None


def resolve_all(level: int = 3) -> list[dict[str, Any]]:
    """Every hook point against the installed sglang, without registering anything."""
    from kvtrace.sglang_plugin._hooks import HOOKS

    rows = []
    for spec in HOOKS:
        if spec.level > level:
            status, detail = "off", f"needs KVTRACE_SGLANG_LEVEL={LEVEL_NAMES[spec.level]}"
        else:
            status, detail, _ = _resolve(spec.target, spec.params)
            if status == "attached":
                status = "available"
        rows.append({"span": spec.span, "target": spec.target, "kind": spec.kind,
                     "level": LEVEL_NAMES[spec.level], "status": status, "detail": detail})
    return rows


def load(*, force: bool = False, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The `sglang.srt.plugins` entry point. Registers the hooks whose targets exist; returns the
    hook report (also logged, and kept for `report()`)."""
    if _STATE["loaded"] and not force:
        return list(_STATE["hooks"])
    config = Config(env)
    _core.CONFIG = config
    _STATE["config"] = config
    rows: list[dict[str, Any]] = []
    _STATE["hooks"] = rows
    _STATE["loaded"] = True
    if config.level == 0:
        logger.info("kvtrace: SGLang plugin loaded with KVTRACE_SGLANG_LEVEL=off: no hooks")
        return rows
    try:
        from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    except Exception as exc:
        logger.warning("kvtrace: sglang.srt.plugins.hook_registry does not import (%s): no hooks", exc)
        return rows
    from kvtrace.sglang_plugin._hooks import HOOKS

    for spec in HOOKS:
        row = {"span": spec.span, "target": spec.target, "kind": spec.kind,
               "level": LEVEL_NAMES[spec.level], "status": "", "detail": ""}
        rows.append(row)
        if spec.level > config.level:
            row["status"], row["detail"] = "off", f"needs KVTRACE_SGLANG_LEVEL={LEVEL_NAMES[spec.level]}"
            continue
        status, detail, sig = _resolve(spec.target, spec.params)
        row["status"], row["detail"] = status, detail
        if status != "attached":
            continue
        try:
            hook = spec.fn(spec.target.rpartition(".")[2], sig) if spec.bind else spec.fn
            HookRegistry.register(spec.target, hook, HookType[spec.kind])
        except Exception as exc:
            row["status"], row["detail"] = "missing", f"register failed: {type(exc).__name__}: {exc}"
    attached = [r for r in rows if r["status"] == "attached"]
    missing = [r for r in rows if r["status"] == "missing"]
    logger.info("kvtrace: SGLang plugin level=%s sample=%s: %d hook points attached, %d missing, %d off",
                config.level_name, config.sample, len(attached), len(missing),
                sum(r["status"] == "off" for r in rows))
    for r in missing:
        logger.warning("kvtrace: hook point %s (%s) missing: %s", r["target"], r["span"], r["detail"])
    return list(rows)


def report() -> dict[str, Any]:
    """What load() attached and what it did not, and what the hooks emitted in this process."""
    import sys

    trace_mod = sys.modules.get("sglang.srt.observability.trace")
    config = _STATE["config"] or _core.CONFIG
    try:
        from importlib.metadata import version

        sglang_version: str | None = version("sglang")
    except Exception:
        sglang_version = None
    return {
        "sglang_version": sglang_version,
        "level": config.level_name,
        "sample": config.sample,
        "output_text": config.output_text,
        "loaded": _STATE["loaded"],
        "sglang_tracing": bool(getattr(trace_mod, "opentelemetry_initialized", False)),
        "hooks": list(_STATE["hooks"]),
        "spans": dict(STATS.spans),
        "hook_errors": dict(STATS.errors),
        "spans_dropped_no_tracer": STATS.no_tracer,
    }


def format_report(rows: list[dict[str, Any]]) -> str:
    """The hook report as a table a person reads."""
    width = max((len(r["target"]) for r in rows), default=10)
    lines = [f"{'status':<10} {'span':<14} {'kind':<7} {'level':<8} {'target':<{width}}  detail"]
    for r in rows:
        lines.append(f"{r['status']:<10} {r['span']:<14} {r['kind']:<7} {r['level']:<8} {r['target']:<{width}}  {r['detail']}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(lines)


logging.getLogger("kvtrace.sglang_plugin").addHandler(logging.NullHandler())
