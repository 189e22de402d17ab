"""The `kvtrace` command line: one click group; each feature's commands live in app/commands/.

Library layers raise domain exceptions; only this layer turns them into one clear line
(click.ClickException) for the person at the terminal.
"""

from __future__ import annotations

import importlib

import click

# Each module defines `commands: list[click.Command]`. Add a feature by adding its module here.
COMMAND_MODULES: tuple[str, ...] = (
    "kvtrace.app.commands.serve",
    "kvtrace.app.commands.ingest",
    "kvtrace.app.commands.analytics",
    "kvtrace.app.commands.app",
    "kvtrace.app.commands.simulate",
    "kvtrace.app.commands.replay",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kvtrace")
def main() -> None:
    """kvtrace: find KV-cache races in LLM-serving traces, link them to bad outputs, replay them.

    Example:

        kvtrace simulate --scenario mixed --out traces/ && kvtrace ingest traces/
    """


for _name in COMMAND_MODULES:
    for _command in importlib.import_module(_name).commands:
        main.add_command(_command)
