"""Every value checked once, at the edge: each setting of the table, from a flag, a variable or
the configuration file, and the options of single commands, are a valid configuration or one
line naming the setting, its source and what is allowed (exit 2), never a traceback."""

from __future__ import annotations

import datetime as dt
import inspect
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_migrator import cli, configfile
from cdc_migrator.base.checks import OPTIONS, Setting, Source
from cdc_migrator.base.settings import Settings
from cdc_migrator.core.state import MigrationState
from cdc_migrator.errors import SettingError

from ..harness import examples, invoke, run_cli

TABLE = Settings.table()
# Every way a setting can be given: each is an option of `config show`, most have a variable
# and a key of the configuration file.
SOURCES = [(name, kind) for name, spec in TABLE.items() for kind in ("flag", "env", "file")
           if kind == "flag" or (kind == "env" and spec.env_name)
           or (kind == "file" and spec.key_name)]
UNREACHABLE = {"CDC_MIGRATOR_MONGODB_URI":
               "mongodb://127.0.0.1:1/app?serverSelectionTimeoutMS=200",
               "CDC_MIGRATOR_RETRY_DEADLINE": "0s"}


def toml_text(value: Any) -> str:
    """A TOML value for any Python value TOML has: every character of a string escaped as
    TOML requires (control characters and DEL as \\uXXXX)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") \
            if math.isinf(value) else repr(value)
    if isinstance(value, str):
        escaped = "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F
                          else "\\\\" if c == "\\" else '\\"' if c == '"' else c for c in value)
        return f'"{escaped}"'
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_text(k)} = {toml_text(v)}" for k, v in value.items()) + "}"


NUMBERS = st.one_of(st.integers(min_value=-2**63, max_value=2**63 - 1),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, -1, 65_536, 2**31, 10**400, 1e309, -0.0, 0.5]))
SCALARS = st.one_of(st.text(), NUMBERS, st.booleans(),
                    st.datetimes(timezones=st.none() | st.just(dt.UTC)), st.dates(), st.times())
# Everything a TOML file can hold.
TOML_VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3),
                        st.dictionaries(st.text(min_size=1, max_size=5), SCALARS, max_size=2))
# Everything a variable or a flag can hold: text without NUL, numbers spelled out, words.
TEXT_VALUES = st.one_of(
    st.text().filter(lambda t: "\x00" not in t),
    NUMBERS.map(str), st.sampled_from(["inf", "-inf", "nan", "1e309", "true", "", " 5 ",
                                       "0x10", "1_000", "PLAINTEXT", "sasl_ssl", "json"]))


# About 17 examples for each of the sources (flag, variable, file key) of each setting.
@settings(max_examples=examples(2000), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from(SOURCES), data=st.data())
def test_every_setting_from_every_source_is_valid_or_one_line_exit_2(source, data):
    name, kind = source
    spec = TABLE[name]
    value = data.draw(TOML_VALUES if kind == "file" else TEXT_VALUES, label="value")
    with tempfile.TemporaryDirectory() as home:
        config = Path(home) / "cdc-migrator.toml"
        config.write_text(f"{spec.key_name} = {toml_text(value)}\n" if kind == "file" else "")
        args, env = ["config", "show", "--json", "--config", str(config)], {}
        if kind == "flag" and spec.kind is bool:
            args.append(spec.flag_name)  # a flag without a value: true
        elif kind == "flag":
            args.append(f"{spec.flag_name}={value}")
        elif kind == "env":
            env[spec.env_name or ""] = value

        code, out, err = invoke(args, env)

    if code == 0:
        shown = json.loads(out)
        if spec.key_name:  # instance_id has no key: config show does not list it
            # An empty variable is no variable (click's rule, and the shells').
            expected = "default" if kind == "env" and value == "" else kind
            assert shown[spec.key_name]["source"] == expected, (name, kind, value, shown)
        return
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (name, kind, value, code, err)
    where = {"flag": f"flag {spec.flag_name}", "env": f"environment variable {spec.env_name}",
             "file": f"{spec.key_name} in config file {config}"}[kind]
    assert lines[0].startswith("cdc-migrator: invalid value ") and where in lines[0] \
        and ": expected " in lines[0], (name, kind, value, lines)


def test_the_property_covers_every_setting_and_source():
    assert len(TABLE) == 43 and len(SOURCES) == 128  # 43 flags, 43 variables, 42 file keys


@settings(max_examples=examples(1000), deadline=None)
@given(spec=st.sampled_from(list(OPTIONS.values())), value=st.one_of(TEXT_VALUES, TOML_VALUES))
def test_every_option_of_a_command_is_checked_as_the_settings_are(spec: Setting, value):
    for source in (Source("flag", spec.flag_name), Source("throttle", "--rate"),
                   Source("state", "throttle.rate", "m")):
        try:
            checked = spec.check(value, source)
        except SettingError as exc:
            assert "\n" not in str(exc) and str(source) in str(exc)
            continue
        assert type(checked) is spec.kind and math.isfinite(checked)
        assert (spec.minimum is None or checked >= spec.minimum) \
            and (spec.maximum is None or checked <= spec.maximum) \
            and (spec.above is None or checked > spec.above)


@settings(max_examples=examples(300), deadline=None)
@given(stored=st.one_of(TOML_VALUES, st.none()))
def test_a_throttle_read_back_from_the_state_is_a_rate_or_a_refusal_never_an_error(stored):
    state = MigrationState.from_document({"_id": "m", "throttle": {"rate": stored}})

    throttle = state.throttle
    if throttle.refused is None:
        assert throttle.rate is None or (math.isfinite(throttle.rate) and throttle.rate > 0)
    else:
        assert throttle.rate is None and "\n" not in throttle.refused
        assert "throttle.rate in the state of m" in throttle.refused


# The reproductions of issue 24. Most run the command line in this process (`invoke`, as the
# property test does: a traceback fails the test); the flag-and-variable one runs it as a
# process of its own, where anything else written to stderr would show.

@pytest.mark.parametrize("rate", ["inf", "1e309", "nan", "-1", "0"])
@pytest.mark.parametrize("command", ["throttle", "backfill", "apply"])
def test_a_rate_that_is_no_finite_positive_number_is_one_line_and_exit_2(command, rate):
    code, _, err = invoke([command, "add_default_role", "--rate", rate], UNREACHABLE)

    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    source = "throttle --rate" if command == "throttle" else "flag --rate"
    assert lines[0] == (f"cdc-migrator: invalid value {rate!r} for {source}: expected a finite "
                        "number of documents per second above 0"), lines


@pytest.mark.parametrize(("toml", "message"), [
    ("retry_deadline = [1,2]", "invalid value [1, 2] for retry_deadline in config file"),
    ("retry_deadline = {a = 1}", "invalid value {'a': 1} for retry_deadline in config file"),
    ("partitions = [1]", "invalid value [1] for partitions in config file"),
    ("partitions = true", "invalid value True for partitions in config file"),
    ("partitions = 1.5", "invalid value 1.5 for partitions in config file"),
    ("lease_seconds = inf", "invalid value inf for lease_seconds in config file"),
    ("metrics_port = 70000", "invalid value 70000 for metrics_port in config file"),
    ("[kafka]\nsecurity_protocol = 5", "invalid value 5 for [kafka] security_protocol in "
                                       "config file"),
    ("[kafka]\nreconnect_backoff_ms = true", "invalid value True for [kafka] "
                                             "reconnect_backoff_ms in config file"),
    ("[mongo]\nmaxPoolSize = -1", "invalid value -1 for [mongo] maxPoolSize in config file"),
    ("topic_replication_factor = 32768", "invalid value 32768 for topic_replication_factor in "
                                         "config file"),
    ("max_record_bytes = 2147483648", "invalid value 2147483648 for max_record_bytes in config "
                                      "file"),
    ('kafka_sasl_oauth_token_command = " "', "invalid value ' ' for "
                                             "kafka_sasl_oauth_token_command in config file"),
])
def test_a_value_of_the_wrong_kind_in_the_file_is_one_line_and_exit_2(tmp_path, monkeypatch,
                                                                      toml, message):
    (tmp_path / "cdc-migrator.toml").write_text(toml + "\n")
    monkeypatch.chdir(tmp_path)

    code, _, err = invoke(["status"], UNREACHABLE)

    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"cdc-migrator: {message} cdc-migrator.toml: expected ")


def test_a_flag_and_its_variable_are_refused_naming_which_one_was_wrong(tmp_path):
    flag = run_cli("status", "--partitions", "-1", env=UNREACHABLE)
    variable = run_cli("status", env={**UNREACHABLE, "CDC_MIGRATOR_MONGO_TLS_INSECURE": "maybe"})

    assert flag.returncode == 2 and flag.stderr.strip() == (
        "cdc-migrator: invalid value '-1' for flag --partitions: expected an integer from 1 to "
        "10,000")
    assert variable.returncode == 2 and variable.stderr.strip() == (
        "cdc-migrator: invalid value 'maybe' for environment variable "
        "CDC_MIGRATOR_MONGO_TLS_INSECURE: expected true or false")


def test_config_show_writes_a_file_that_reads_back_to_the_same_values(tmp_path):
    odd = 'a "quoted" \\ tab\t, line\nbreak, DEL\x7f, astral \U0001F600'
    (tmp_path / "cdc-migrator.toml").write_text(
        f"group_prefix = {toml_text('g')}\n[kafka]\nclient_id = {toml_text(odd)}\n")

    shown = run_cli("config", "show", "--max-write-latency", "1.5s", cwd=tmp_path,
                    env=UNREACHABLE)
    (tmp_path / "again.toml").write_text(shown.stdout)
    again = configfile.load(tmp_path / "again.toml")
    read_back = run_cli("config", "show", "--config", "again.toml", cwd=tmp_path,
                        env=UNREACHABLE)

    assert shown.returncode == 0, shown.stderr
    assert again.defaults["group_prefix"] == "g" and again.kafka["client_id"] == odd
    # Durations are written with their unit: read back, they warn of nothing.
    assert again.defaults["max_write_latency"] == "1500ms"
    assert again.defaults["retry_deadline"] == "0s" and again.defaults["lease_seconds"] == "30s"
    assert read_back.returncode == 0 and "WARNING" not in read_back.stderr, read_back.stderr


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix}{name} ")
        else:
            found.append((prefix + name, command))
    return found


@pytest.mark.parametrize(("name", "command"), _commands(cli.cli), ids=lambda c: str(c))
def test_every_option_of_a_command_reaches_its_function_by_its_name(name, command):
    """The options declared from the tables hand their value to a parameter of that name:
    each option not a setting (those go into the Settings) is a parameter of the command."""
    taken = set(inspect.signature(command.callback).parameters)
    for param in command.params:
        if param.name in TABLE or param.name in ("config", "verbose") \
                or not param.expose_value:  # a deprecated flag hands its value to the new one
            continue
        assert param.name in taken or param.name == "quiet", (name, param.name)
