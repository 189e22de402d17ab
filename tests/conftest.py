"""Shared test configuration and the fixtures several test modules use.

Hypothesis: CI (`CI=1`, set by .ci/run) runs a derandomized profile, so a red build always
reproduces; locally each run draws fresh examples and can find new cases.

Stores: each sample store is built once per test run (session scope) by the real pipeline and
only read by the tests; a test that writes takes a copy (`mixed_copy`). Plain helpers live in the
support modules beside this file (ingest_support, receiver_support, simulator_support,
ingest_otlp_builders, analytics_store, app_sample_store, app_hostile_store, app_process); no test
module imports another (tests/test_layering.py checks)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from app_hostile_store import build_hostile_store
from app_sample_store import MIXED, PR35049, analyse, ingest_sample
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test` runs two workers, `--dist loadgroup`), every `spark` test goes
    to one worker, so one JVM and one SparkSession serve them all, as in a serial run, and they are
    collected first. First among the hooks: xdist's own hook reads the group marks to name the
    groups, and ran before this one (the spark tests were spread over every worker, each building
    the test lake and starting its own JVM)."""
    for item in items:
        if item.get_closest_marker("spark") is not None:
            item.add_marker(pytest.mark.xdist_group("spark"))
    # the longest group first, so it does not start last and hold the run up alone
    items.sort(key=lambda item: item.get_closest_marker("spark") is None)


# One local Spark session serves every `spark` test (JVM start-up and warm-up are paid once); tiny
# inputs, so one shuffle partition, no adaptive re-planning, no UI, and a JVM that compiles with C1
# only (tiny queries never pay back C2's compile time on a 2-core box: about half the wall time), and
# no whole-stage code generation (compiling each stage's Java costs more than running it interpreted
# over a few hundred rows: 70 -> 64 s for the findings chain of pr35049 on a loaded box), and no
# constraint propagation (an optimizer rule that infers filters: its planning time is larger than
# what it saves on tiny inputs; 31.9 -> 27.3 s for the same chain, warm, on a quiet box).
SPARK_TEST_CONF = {
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.constraintPropagation.enabled": "false",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "1",
    "spark.default.parallelism": "2",
    "spark.sql.adaptive.enabled": "false",
    "spark.driver.memory": "1g",
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
}


@pytest.fixture(scope="session")
def spark():  # type: ignore[no-untyped-def]
    """The session-wide local[2] SparkSession; started only when a spark test first asks for it."""
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("the spark tests need java (.ci/run installs openjdk-17-jre-headless)")
    from kvtrace.analytics.spark.runner import spark_session

    session = spark_session("local[2]", conf=SPARK_TEST_CONF)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(autouse=True)
def _no_store_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KVTRACE_DB or KVTRACE_WAIT in the shell running the tests must not steer the commands under test."""
    monkeypatch.delenv("KVTRACE_DB", raising=False)
    monkeypatch.delenv("KVTRACE_WAIT", raising=False)


@pytest.fixture(scope="session")
def mixed_ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sample_traces/mixed ingested (not analysed): three versions, both bug kinds. Read only."""
    return ingest_sample(MIXED, tmp_path_factory.mktemp("mixed_ingested"))


@pytest.fixture(scope="session")
def mixed_store(mixed_ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sample_traces/mixed ingested and analysed (`kvtrace analyze`'s result tables). Read only."""
    db = tmp_path_factory.mktemp("app_mixed") / "kvtrace.duckdb"
    shutil.copyfile(mixed_ingested, db)
    analyse(db)
    return db


@pytest.fixture()
def mixed_copy(mixed_ingested: Path, tmp_path: Path) -> Path:
    """A writable copy of the ingested (not analysed) mixed store, for a test that changes it."""
    db = tmp_path / "mixed.duckdb"
    shutil.copyfile(mixed_ingested, db)
    return db


@pytest.fixture(scope="session")
def ingested_only_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sample_traces/pr35049 ingested but never analysed: pages must say `run kvtrace analyze`."""
    return ingest_sample(PR35049, tmp_path_factory.mktemp("app_pr35049"))


@pytest.fixture(scope="session")
def hostile_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Spans whose ids, hosts and versions are markup (app_hostile_store), ingested and analysed."""
    return build_hostile_store(tmp_path_factory.mktemp("app_hostile"))
