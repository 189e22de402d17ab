"""`kvtrace replay export | run | minimize | store`: GPU replay of suspect windows, at the terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import duckdb
from tqdm import tqdm

from kvtrace.app.options import db_option, optional_db_option, store_wait
from kvtrace.ingest.store import StoreError, open_store
from kvtrace.replay.plan import PlanError, load_plan, save_plan
from kvtrace.replay.timing import DEFAULT_FLOOR_NS

MODES = ("as-recorded", "fixed", "both")


@click.group("replay")
def replay_group() -> None:
    """Replay a finding's window on a GPU (or the CPU executor): confirm the race, prove the fix.

    Example:

        kvtrace replay export --db demo/kvtrace.duckdb --finding 32916fe867f36da6 --out plan.json
        && kvtrace replay run plan.json --device cpu
    """


def _open(db: str, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        return open_store(db, read_only=read_only, wait_s=store_wait(), create=False)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc


def _ensure_findings(con: duckdb.DuckDBPyConnection) -> None:
    """Use the stored `findings`; where `kvtrace analyze` has not stored any, compute them now."""
    try:
        row = con.execute("SELECT count(*) FROM findings").fetchone()
        if row and row[0]:
            return
    except duckdb.CatalogException:
        pass
    from kvtrace.analytics.findings import compute

    live = compute(con)
    con.register("replay_live_findings", live)
    con.execute("CREATE OR REPLACE TEMP TABLE findings AS SELECT * FROM replay_live_findings")


@replay_group.command("export")
@db_option
@click.option("--finding", "finding_id", default=None, help="Finding id (kvtrace findings).")
@click.option("--window", default=None, help="INSTANCE:T0..T1 on the instance's clock (ns, or with s/ms/us).")
@click.option("--tp-rank", type=int, default=0, show_default=True, help="Rank, with --window.")
@click.option("--all-findings", is_flag=True, help="Export every finding; --out is then a folder.")
@click.option("--out", "out", required=True, type=click.Path(), help="Plan file (or folder, with --all-findings).")
def export_command(db: str, finding_id: str | None, window: str | None, tp_rank: int, all_findings: bool, out: str) -> None:
    """Export the ordered accesses of a finding's window (or any window) as a replay plan.

    Example:

        kvtrace replay export --db demo/kvtrace.duckdb --window decode-0:878.7s..886.1s --out plan.json
    """
    from kvtrace.replay.export import export_finding, export_window

    if [finding_id is not None, window is not None, all_findings].count(True) != 1:
        raise click.ClickException("give exactly one of --finding ID, --window INSTANCE:T0..T1, --all-findings")
    con = _open(db, read_only=True)
    try:
        if window is not None:
            plan = export_window(con, window, tp_rank, db)
            save_plan(plan, out)
            click.echo(f"{out}: {len(plan.ops)} ops, {len(plan.edges)} ordering edges")
            return
        _ensure_findings(con)
        ids = [finding_id] if finding_id else [r[0] for r in con.execute("SELECT finding_id FROM findings ORDER BY finding_id").fetchall()]
        if all_findings:
            Path(out).mkdir(parents=True, exist_ok=True)
        for fid in ids:
            plan = export_finding(con, fid, db)
            path = Path(out) / f"{fid}.json" if all_findings else Path(out)
            save_plan(plan, path)
            click.echo(f"{path}: {plan.expected.get('kind')} ({plan.expected.get('confidence')}), {len(plan.ops)} ops")
    except PlanError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        con.close()


@replay_group.command("run")
@click.argument("plans", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cpu: the deterministic executor; cuda: re-execute on the GPU (needs torch).")
@click.option("--mode", type=click.Choice(MODES), default="both", show_default=True,
              help="as-recorded (the missing synchronization), fixed (the fix's), or both.")
@click.option("--time-scale", type=float, default=None, help="Device time per recorded time (default: auto, ~20 ms windows).")
@click.option("--sweep", "sweep_n", type=click.IntRange(0), default=0, help="Jittered variants per mode.")
@click.option("--jitter", type=click.FloatRange(0), default=10.0, show_default=True, help="Duration jitter, percent.")
@click.option("--min-gap-ms", type=click.FloatRange(min=0), default=DEFAULT_FLOOR_NS / 1e6, show_default=True,
              help="Smallest device-time gap kept between racing accesses (the order-preserving time warp).")
@click.option("--sanitize", is_flag=True, help="Also run under TORCH_CUDA_SANITIZER=1 (cuda only).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the records as JSON lines.")
@optional_db_option("Store the results in this store (replay_runs)")
def run_command(
    plans: tuple[str, ...], device: str, mode: str, time_scale: float | None, sweep_n: int, jitter: float,
    min_gap_ms: float, sanitize: bool, json_out: str | None, db: str | None,
) -> None:
    """Replay plans in as-recorded and fixed mode and print the verdicts.

    Example:

        kvtrace replay run plan.json --device cuda --sweep 50 --jitter 20 --sanitize --db demo/kvtrace.duckdb
    """
    from kvtrace.replay import run as runner

    modes = runner.MODES if mode == "both" else (mode,)
    records: list[dict[str, Any]] = []
    try:
        with tqdm(plans, desc="replaying", unit="plan", disable=len(plans) < 2) as bar:
            for path in bar:
                plan = load_plan(path)
                name = Path(path).stem
                if device == "cpu":
                    records += runner.run_plan_cpu(plan, name, modes, sweep_n, jitter, time_scale, min_gap_ms * 1e6)
                else:
                    try:
                        recs = runner.run_plan_gpu(plan, name, modes, time_scale, sweep_n, jitter,
                                                   floor_ns=min_gap_ms * 1e6)
                    except (ImportError, RuntimeError, AssertionError) as exc:
                        raise click.ClickException(
                            f"--device cuda needs torch with a CUDA GPU (pip install 'kvtrace[gpu]'): {exc}") from exc
                    if sanitize:
                        s = runner.sanitizer_check(path, time_scale)
                        for r in recs:
                            r["sanitizer"] = s
                    records += recs
    except PlanError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(runner.table(records))
    if json_out:
        Path(json_out).write_text("".join(json.dumps(r) + "\n" for r in records))
    if db:
        _store(db, records)


def _store(db: str, records: list[dict[str, Any]]) -> None:
    from kvtrace.replay.store import write_runs

    try:
        with _open(db, read_only=False) as con:
            run_id = write_runs(con, records)
    except duckdb.Error as exc:
        raise click.ClickException(f"{db}: could not store the replay results: {str(exc).splitlines()[0]}") from exc
    click.echo(f"stored {len(records)} replay records in {db} (replay_runs, run {run_id})")


@replay_group.command("store")
@click.argument("results", type=click.Path(exists=True, dir_okay=False))
@db_option
def store_command(results: str, db: str) -> None:
    """Store replay records (JSON lines from `python -m kvtrace.replay.run --json` on a GPU host) in the store.

    Example:

        kvtrace replay store gpu-results.jsonl --db demo/kvtrace.duckdb
    """
    records = []
    for n, line in enumerate(Path(results).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{results}: line {n}: not JSON ({exc.msg})") from exc
        if not isinstance(rec, dict) or "verdict" not in rec or "mode" not in rec:
            raise click.ClickException(f"{results}: line {n}: not a replay record (no verdict/mode)")
        records.append(rec)
    _store(db, records)


@replay_group.command("minimize")
@click.argument("plan_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Minimal reproducer plan.")
def minimize_command(plan_path: str, out: str) -> None:
    """Delta-debug a plan down to the fewest operations that still corrupt (CPU executor).

    Example:

        kvtrace replay minimize plan.json --out minimal.json
    """
    from kvtrace.replay.minimize import ddmin

    try:
        plan = load_plan(plan_path)
        small = ddmin(plan)
    except PlanError as exc:
        raise click.ClickException(str(exc)) from exc
    save_plan(small, out)
    click.echo(f"{out}: {len(small.ops)} of {len(plan.ops)} ops still corrupt as recorded")
    for o in small.ops:
        click.echo(f"  {o.op:<8} {o.rid[:12]:<12} {o.kv_pool}:{_pages(o.pages)} {o.start_ns}..{o.end_ns} ns")


def _pages(pages: tuple[int, ...]) -> str:
    return f"[{pages[0]}..{pages[-1]}]" if pages else "[]"


commands: list[click.Command] = [replay_group]
