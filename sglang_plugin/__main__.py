"""`python -m kvtrace.sglang_plugin --report [--json] [--level LEVEL]`: every hook point of the
plugin against the sglang installed in this environment: `available` (would attach), `missing`
(with the reason: module does not import, attribute gone, signature changed) or `off` (above the
level). Run it in the server's environment before starting it; exit 1 when a hook point of the
chosen level is missing."""

from __future__ import annotations

import argparse
import json
import sys

from kvtrace.sglang_plugin import format_report, resolve_all
from kvtrace.sglang_plugin._core import LEVELS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvtrace.sglang_plugin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="store_true", help="list every hook point against the installed sglang")
    parser.add_argument("--json", action="store_true", help="the report as JSON")
    parser.add_argument("--level", default="read", choices=sorted(LEVELS, key=LEVELS.__getitem__),
                        help="resolve the hook points up to this level (default: read, i.e. all)")
    args = parser.parse_args(argv)
    if not args.report:
        parser.print_help()
        return 0
    try:
        import sglang  # noqa: F401
    except Exception as exc:
        print(f"sglang does not import here ({type(exc).__name__}: {exc}); install it in this environment",
              file=sys.stderr)
        return 2
    rows = resolve_all(LEVELS[args.level])
    print(json.dumps(rows, indent=1) if args.json else format_report(rows))
    return 1 if any(r["status"] == "missing" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
