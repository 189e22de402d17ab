"""A store whose spans carry hostile values, for the escaping tests: the simulator's pr35049 case
(one abort-before-write-complete race) emitted through the real opentelemetry-sdk with the decode
instance's `service.instance.id` / `host.name`, the `service.version` and the culprit's and
victim's `rid` replaced by values that are markup in Markdown or plotly, then `kvtrace ingest`
and `kvtrace analyze` as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from kvtrace.simulator.config import scenario_knobs
from kvtrace.simulator.otlp_sdk import SdkSink
from kvtrace.simulator.records import AttrValue, CountingSink, InstanceInfo, SpanRecord
from kvtrace.simulator.runner import run_pr35049

# A tracking beacon (loopback port 9: nothing listens), a foreign link, bold, and a newline that
# would start a heading.
INSTANCE = "![x](http://127.0.0.1:9/beacon.png) [link](http://evil) **bold**\n# Heading"
CULPRIT_RID = "<img src=x onerror=alert(1)>"
VICTIM_RID = "![v](http://127.0.0.1:9/victim.png) :smile: `code` $x^2$"
VERSION = "<b>v</b><a href='http://evil'>x</a>"
HOST = "gpu <i>d</i> :red[red] <a href='http://evil'>h</a>"
KVTRACE = str(Path(sys.executable).with_name("kvtrace"))


@dataclass(frozen=True)
class _Shown(InstanceInfo):
    """An instance whose resource carries other `service.instance.id` / `host.name` values (the
    file name stays the plain instance id)."""

    shown_id: str = ""
    shown_host: str = ""

    def resource_attributes(self, version: str, sdk_version: str) -> dict[str, str]:
        attrs = super().resource_attributes(version, sdk_version)
        return {**attrs, "service.instance.id": self.shown_id, "host.name": self.shown_host}


class _RenamingSink:
    """SdkSink with attribute values renamed (rids, the transfer's dst_instance) and instances swapped."""

    def __init__(self, out: Path, names: dict[str, str], instances: dict[str, InstanceInfo]) -> None:
        self._inner = SdkSink(out, "json")
        self._names = names
        self._instances = instances

    def _value(self, value: AttrValue) -> AttrValue:
        if isinstance(value, str):
            return self._names.get(value, value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [self._names.get(str(v), str(v)) for v in value]
        return value

    def emit(self, record: SpanRecord) -> None:
        self._inner.emit(replace(
            record, instance=self._instances.get(record.instance.instance_id, record.instance),
            attributes={k: self._value(v) for k, v in record.attributes.items()}))

    def close(self) -> None:
        self._inner.close()


def write_hostile_traces(out: Path) -> None:
    base = scenario_knobs("pr35049")
    knobs = replace(base, phases=(replace(base.phases[0], version=VERSION),))
    [race] = run_pr35049(knobs, 0, CountingSink()).races  # the same seed names the same rids
    assert race.victim_rid is not None
    decode = next(i for i in run_pr35049(knobs, 0, CountingSink()).instances if i.role == "decode")
    shown = _Shown(decode.instance_id, decode.role, decode.host, decode.offset_ns,
                   shown_id=INSTANCE, shown_host=HOST)
    names = {race.culprit_rid: CULPRIT_RID, race.victim_rid: VICTIM_RID, decode.instance_id: INSTANCE}
    out.mkdir(parents=True)
    run_pr35049(knobs, 0, _RenamingSink(out, names, {decode.instance_id: shown}))


def build_hostile_store(root: Path) -> Path:
    """The hostile traces written under `root`, then `kvtrace ingest` and `kvtrace analyze` run."""
    write_hostile_traces(root / "traces")
    db = root / "kvtrace.duckdb"
    for argv in (["ingest", str(root / "traces"), "--db", str(db)], ["analyze", "--db", str(db)]):
        subprocess.run([KVTRACE, *argv], check=True, capture_output=True, timeout=120)
    return db
