"""The command line's options and help come from one place each: a command takes the settings
the settings table names for it, and its help is its API function's docstring."""

from __future__ import annotations

import inspect

import click

from cdc_migrator import api
from cdc_migrator.base.settings import Settings
from cdc_migrator.cli import cli


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found.update(_commands(command, f"{path} "))
        else:
            found[path] = command
    return found


def test_each_command_takes_the_settings_the_table_names_for_it_and_no_other():
    table = Settings.table()
    commands = _commands(cli)
    for path, command in commands.items():
        taken = {p.name for p in command.params if p.name in table}
        named = {n for n, spec in table.items()
                 if spec.commands is None or path in spec.commands}
        assert taken == named, path
    for name, spec in table.items():
        unknown = set(spec.commands or ()) - set(commands)
        assert not unknown, f"setting {name} names commands that do not exist: {unknown}"


def test_a_commands_help_is_its_api_docstring_without_the_python_paragraph():
    commands = _commands(cli)
    assert commands["apply"].help == inspect.getdoc(api.apply).split("\n\nIn Python:")[0]
    for path, command in commands.items():
        assert command.help, f"{path} has no help"
        assert "In Python" not in command.help and ":func:" not in command.help, path
