"""kvtrace: find KV-cache races in LLM-serving traces, link them to garbled outputs, replay them on a GPU.

The installed distribution has one import namespace, `kvtrace.*`. In the repository the layers
stay top-level folders (`ingest/`, `analytics/`, `app/`, `replay/`, `simulator/`) and
`kvtrace/<layer>` is a symbolic link to each, so editable installs, mypy, pytest and a GPU host
running `python -m kvtrace.replay.run` from a checkout all see the same package as the wheel.

This module imports nothing: `kvtrace.replay` must stay importable with only torch installed.
"""

__version__ = "0.1.0"
