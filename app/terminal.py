"""Values from a trace (or a file name) printed on a terminal as text, never as control codes.

A resource attribute such as `host.name` is whatever the emitting process put there: an ANSI
escape (`\\x1b[2K\\x1b[1A`) would erase and rewrite the lines above it (a summary could be made to
read "quarantined 0"), a newline would start a line of its own, a bidirectional override would
reorder what is shown. `term()` shows each such character as an escape instead.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, the Unicode line and paragraph separators, the directional marks,
# embeddings, overrides and isolates.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    named = _NAMED.get(c)
    if named is not None:
        return named
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def term(value: object) -> str:
    """`value` as one line of terminal text: control characters shown as `\\x1b`, `\\n`, `\\u202e`."""
    return _CONTROL.sub(_escape, str(value))


__all__ = ["term"]
