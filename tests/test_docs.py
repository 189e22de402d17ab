"""Every command a person can type is documented: a docstring that ends in an example, help on
every option, and a line in the README (the sqlite-utils habit)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from kvtrace.app.cli import main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands(group: click.Group, prefix: str = "kvtrace") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        found.append((path, command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, path))
    return found


COMMANDS = _commands(main)


def test_every_feature_command_is_registered() -> None:
    names = {path for path, _ in COMMANDS}
    for expected in ("simulate", "ingest", "quarantine", "export", "analyses", "query", "analyze",
                     "findings", "report", "replay", "serve", "app"):
        assert f"kvtrace {expected}" in names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_command_has_docstring_with_example(path: str, command: click.Command) -> None:
    assert command.help, f"{path} has no docstring"
    if not isinstance(command, click.Group):
        assert "Example:" in command.help, f"{path}'s docstring has no 'Example:'"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_option_has_help(path: str, command: click.Command) -> None:
    missing = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
    assert not missing, f"{path}: options without help: {missing}"


@pytest.mark.parametrize("path", [p for p, c in COMMANDS if p.count(" ") == 1], ids=lambda p: p)
def test_readme_mentions_every_top_level_command(path: str) -> None:
    assert f"`{path}" in README, f"README.md does not mention `{path} ...`"
