"""Every command has help text and is in the README's command reference; every exit code
the library can produce is in the README's exit-code table."""

from __future__ import annotations

import re

import typer.main
from support.cli import REPO_ROOT

from ledger import errors
from ledger.cli import AREAS, app, register


def _commands() -> list[tuple[str, str | None]]:
    register([])
    click_app = typer.main.get_command(app)
    out: list[tuple[str, str | None]] = []
    for name, cmd in click_app.commands.items():  # type: ignore[attr-defined]
        if getattr(cmd, "hidden", False):
            continue
        sub = getattr(cmd, "commands", None)
        if sub:
            out.extend((f"{name} {s}", c.help) for s, c in sub.items() if not c.hidden)
        else:
            out.append((name, cmd.help))
    return out


def test_every_command_documented_with_help() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    reference = readme.split("## Command reference", 1)[1]
    commands = _commands()
    assert len(commands) >= 25
    for name, help_text in commands:
        assert help_text and help_text.strip(), f"{name} has no help text"
        assert f"`ledger {name}" in reference, f"ledger {name} is not in the README's reference"


def test_area_table_names_every_command() -> None:
    register([])
    click_app = typer.main.get_command(app)
    listed = {n for names in AREAS.values() for n in names}
    assert set(click_app.commands) <= listed  # type: ignore[attr-defined]


def test_every_exit_code_is_documented() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.split("## Exit codes", 1)[1].split("##", 1)[0]
    documented = {
        int(c) for row in re.findall(r"^\| ([0-9, ]+) \|", table, re.M) for c in row.split(",")
    }
    codes = {
        cls.exit_code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.LedgerError)
    }
    assert codes | {0, 2, 130, 143} <= documented
