"""Rewrite tests/scenarios/<scenario>/expected_findings.jsonl from a run checked against the truth.

For each scenario folder: ingest its traces into a fresh store, compute the findings, score them
against labels.json (recall and precision >= 0.99 per kind, victims right, no contradicted
`certain` finding) and only then write the expected file. Prints the score table it checked.

    .venv/bin/python tests/scenarios/regenerate.py            # every scenario folder
    .venv/bin/python tests/scenarios/regenerate.py --check    # print the table, write nothing
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from scenarios_support import KEEP, SCENARIOS, findings_table, ingest  # noqa: E402

from kvtrace.analytics import evaluation, findings, runner  # noqa: E402


def main(write: bool) -> int:
    failed = False
    print(f"{'scenario':<15} {'kind':<28} {'races':>5} {'found':>5} {'recall':>6} {'prec':>6} {'victims':>7} {'contra':>6}")
    for folder in SCENARIOS:
        spec = json.loads((folder / "scenario.json").read_text())
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "store.duckdb"
            ingest(ROOT / spec["traces"], db)
            con = runner.connect(db)
            try:
                rows = findings.compute(con).to_pylist()
            finally:
                con.close()
        labels = evaluation.load_labels(ROOT / spec["labels"])
        ok = True
        for s in evaluation.score_findings(findings_table(rows), labels):
            good = (s.recall >= 0.99 and s.precision >= 0.99 and s.victims_right == s.matched_races
                    and s.certain_contradicted == 0)
            ok &= good
            if s.true_races or s.findings:
                print(f"{folder.name:<15} {s.kind:<28} {s.true_races:>5} {s.findings:>5} {s.recall:>6.3f} "
                      f"{s.precision:>6.3f} {s.victims_right:>3}/{s.matched_races:<3} {s.certain_contradicted:>6}"
                      f"{'' if good else '  <-- FAILS'}")
        failed |= not ok
        if write and ok:
            lines = [json.dumps({k: r[k] for k in KEEP}) for r in rows]
            (folder / "expected_findings.jsonl").write_text("".join(line + "\n" for line in lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(write="--check" not in sys.argv[1:]))
