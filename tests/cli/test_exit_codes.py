"""One rule for the exit codes of every command (README.md's table), tested per command of
``cdc-migrator --help``: 0 done, 1 refused or failed with a reason, 2 what the command was
given cannot be used (found before any work), 130 interrupted.

The commands run in this process against services that are not there (port 1, a retry
deadline of 0s): no command needs MongoDB or Kafka to show how it fails. Exit 0 of every
command on real services is the business of each command's own tests.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from cdc_migrator import cli
from cdc_migrator.base import logs

from ..harness import ROOT, invoke

NAME = "add_default_role"  # a migration of the repository's transforms/
NOWHERE = {"CDC_MIGRATOR_MONGODB_URI": "mongodb://127.0.0.1:1/app?serverSelectionTimeoutMS=200",
           "CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
           "CDC_MIGRATOR_RETRY_DEADLINE": "0s", "CDC_MIGRATOR_MONGO_TIMEOUT_MS": "200ms",
           "CDC_MIGRATOR_TRANSFORMS": str(ROOT / "transforms")}
# The arguments of each command, as it would run; None: it reaches no service, and has no
# way to fail with 1 (ARGS gives its arguments).
COMMANDS: dict[str, list[str] | None] = {
    "accept": [NAME], "apply": [NAME], "backfill": [NAME], "cancel": [NAME], "census": [NAME],
    "config show": None, "consume": [NAME], "cutover": [NAME], "dlq list": [NAME],
    "dlq retry": [NAME], "history": ["users"], "init": None, "next": ["users"],
    "pause": [NAME], "preflight": [NAME],
    "reset": [NAME, "--yes"], "resume": [NAME], "revert": [NAME], "run": [NAME],
    "status": [NAME], "tail": [NAME], "throttle": [NAME, "--rate", "5"], "verify": [NAME],
}
ARGS = {**COMMANDS, "config show": [], "init": ["add_x", "--collection", "items"]}


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix}{name} ")
        else:
            found.append(prefix + name)
    return sorted(found)


def test_the_table_covers_every_command_of_help():
    assert sorted(COMMANDS) == _commands(cli.cli)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_exits_0(command):
    code, out, _ = invoke([*command.split(), "--help"], NOWHERE)

    assert code == 0 and out.startswith("Usage: "), out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_value_not_allowed_exits_2_with_one_line(command):
    code, _, err = invoke([*command.split(), *ARGS[command], "--retry-deadline", "5x"],
                          NOWHERE)

    assert code == 2 and err.strip().splitlines() == [
        "cdc-migrator: invalid value '5x' for flag --retry-deadline: expected a duration, a "
        "number and its unit (ms, s, m, h, d; e.g. 250ms, 30s, 5m) from 0s to 365d"], err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unknown_flag_exits_2(command):
    code, _, err = invoke([*command.split(), "--no-such-flag"], NOWHERE)

    assert code == 2 and "No such option '--no-such-flag'" in err, err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unknown_migration_exits_2_with_one_line(command):
    if COMMANDS[command] is None or command in ("history", "next", "status"):
        pytest.skip(f"{command} takes no migration name")
    args = ["nope" if a == NAME else a for a in COMMANDS[command] or []]

    code, _, err = invoke([*command.split(), *args], NOWHERE)

    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(
        f"cdc-migrator: no migration named 'nope' in {ROOT / 'transforms'} (found: "), err


@pytest.mark.parametrize("command", sorted(c for c, args in COMMANDS.items() if args))
def test_a_service_out_of_reach_exits_1_naming_it(command):
    code, _, err = invoke([*command.split(), *(COMMANDS[command] or [])], NOWHERE)

    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("cdc-migrator: ") and \
        ("MongoDB" in last or "Kafka" in last), err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_interruption_exits_130(command, monkeypatch, tmp_path):
    def interrupted(**_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(logs, "bind", interrupted)  # called as every command starts its work
    monkeypatch.chdir(tmp_path)  # init writes nothing: it is interrupted first

    code, _, err = invoke([*command.split(), *ARGS[command]], NOWHERE)

    assert code == 130 and err.strip().splitlines()[-1] == \
        "interrupted; progress so far is saved", err


def test_declining_the_confirmation_of_reset_exits_1_and_changes_nothing(monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr(click, "confirm", lambda *a, **k: False)

    code, _, err = invoke(["reset", NAME], NOWHERE)

    assert code == 1 and err.strip().splitlines() == [f"cdc-migrator: {NAME}: not reset"], err


def test_init_and_config_show_exit_0_without_services(monkeypatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)

    made, _, made_err = invoke(["init", "add_x", "--collection", "items", "--transforms",
                                str(tmp_path)], {})
    shown, _, shown_err = invoke(["config", "show"], {})

    assert made == 0 and list(tmp_path.glob("*add_x.py")), made_err
    assert shown == 0, shown_err
