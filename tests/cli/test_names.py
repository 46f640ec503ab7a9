"""One command line (issue 30): every setting has a CDC_MIGRATOR_ variable, every duration takes
a unit, and the spellings of before still work for one release, each with one warning line.

Each deprecated spelling is tested on its own: it still gives its value, and it says so once.
The commands run in this process (``invoke``); where a value only reaches an API function
(``census --sample``), that function is replaced to see what it is given: no service is
involved in reading a command line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cdc_migrator import api
from cdc_migrator.base.checks import OPTIONS, Source
from cdc_migrator.base.settings import Settings

from ..harness import invoke

TABLE = Settings.table()
NAME = "add_default_role"  # a migration of the repository's transforms/
NOWHERE = {"CDC_MIGRATOR_MONGODB_URI": "mongodb://127.0.0.1:1/app?serverSelectionTimeoutMS=200",
           "CDC_MIGRATOR_RETRY_DEADLINE": "0s"}


def warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if " WARNING " in line]


def shown(args: list[str], env: dict[str, str], cwd: Path | None = None,
          monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[dict[str, Any], list[str]]:
    """``config show --json`` with ``args``: the values shown, and the warning lines."""
    if cwd is not None and monkeypatch is not None:
        monkeypatch.chdir(cwd)
    code, out, err = invoke(["config", "show", "--json", *args], env)
    assert code == 0, err
    return json.loads(out), warnings(err)


def test_every_setting_has_a_prefixed_variable():
    for name, spec in TABLE.items():
        assert spec.env_name and spec.env_name.startswith("CDC_MIGRATOR_"), name
        assert all(not old.startswith("CDC_MIGRATOR_") or old != spec.env_name
                   for old in spec.old_env)


# Deprecated variable -> (setting's file key, value given, value shown, the new variable).
OLD_VARIABLES = {
    "MONGODB_URI": ("mongodb_uri", "mongodb://db.example:27017/shop",
                    "mongodb://db.example:27017/shop", "CDC_MIGRATOR_MONGODB_URI"),
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka_bootstrap_servers", "k1:9092,k2:9092", "k1:9092,k2:9092",
                                "CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS"),
    "CDC_MIGRATOR_GROUP": ("group_prefix", "team-a", "team-a", "CDC_MIGRATOR_GROUP_PREFIX"),
}


@pytest.mark.parametrize("old", OLD_VARIABLES)
def test_a_deprecated_variable_still_gives_its_value_with_one_warning(old):
    key, given, value, new = OLD_VARIABLES[old]

    found, warned = shown([], {old: given})

    assert found[key] == {"value": value, "source": "env"}
    assert len(warned) == 1 and warned[0].endswith(
        f"environment variable {old} is deprecated: use {new}"), warned


@pytest.mark.parametrize("old", OLD_VARIABLES)
def test_the_new_variable_wins_over_the_deprecated_one_which_is_then_not_named(old):
    key, given, _, new = OLD_VARIABLES[old]
    other = given.replace("example", "other").replace("k1", "k3").replace("team-a", "team-b")

    found, warned = shown([], {old: given, new: other})

    # An application's own MONGODB_URI beside the tool's variable is no use of an alias.
    assert found[key]["value"] == other and warned == []


def test_the_deprecated_group_flag_still_gives_the_prefix_with_one_warning():
    found, warned = shown(["--group", "team-a"], {})

    assert found["group_prefix"] == {"value": "team-a", "source": "flag"}
    assert len(warned) == 1 and warned[0].endswith(
        "flag --group is deprecated: use --group-prefix"), warned


def test_the_new_flag_wins_over_the_deprecated_one():
    found, _ = shown(["--group", "old", "--group-prefix", "new"], {})

    assert found["group_prefix"]["value"] == "new"


def test_a_deprecated_flags_value_is_checked_naming_that_flag():
    code, _, err = invoke(["config", "show", "--group", ""], {})

    assert code == 2 and err.strip().splitlines()[-1].startswith(
        "cdc-migrator: invalid value '' for flag --group: expected "), err


def test_the_deprecated_group_key_of_the_file_still_gives_the_prefix_with_one_warning(
        tmp_path, monkeypatch):
    (tmp_path / "cdc-migrator.toml").write_text('group = "team-a"\n')

    found, warned = shown([], {}, tmp_path, monkeypatch)

    assert found["group_prefix"] == {"value": "team-a", "source": "file"}
    assert len(warned) == 1 and warned[0].endswith(
        "group in config file cdc-migrator.toml is deprecated: use group_prefix"), warned


def test_the_new_key_of_the_file_wins_over_the_deprecated_one(tmp_path, monkeypatch):
    (tmp_path / "cdc-migrator.toml").write_text('group_prefix = "new"\ngroup = "old"\n')

    found, _ = shown([], {}, tmp_path, monkeypatch)

    assert found["group_prefix"]["value"] == "new"


@pytest.mark.parametrize(("command", "function", "parameter"), [
    ("census", "census", "sample"), ("verify", "verify", "sample_size")])
def test_the_deprecated_sample_flag_still_gives_its_value_with_one_warning(
        monkeypatch, command, function, parameter):
    given: dict[str, Any] = {}

    def record(settings: Any, name: str, **options: Any) -> None:
        given.update(options)
        raise SystemExit(0)

    monkeypatch.setattr(api, function, record)
    new = {"census": "--per-shape", "verify": "--show-ids"}[command]

    code, _, err = invoke([command, "m", "--sample", "7"], NOWHERE)
    old_value = given[parameter]
    both, _, _ = invoke([command, "m", new, "8", "--sample", "7"], NOWHERE)

    assert code == 0 == both and old_value == 7 and given[parameter] == 8
    assert len(warnings(err)) == 1 and warnings(err)[0].endswith(
        f"flag --sample is deprecated: use {new}"), err


# Duration settings: (flag, a bare number, the unit it is read in, what a unit spells).
BARE_DURATIONS = [
    ("retry_deadline", "--retry-deadline", "30", "seconds", "30s", 30.0),
    ("max_replication_lag", "--max-replication-lag", "5", "seconds", "5s", 5.0),
    ("max_write_latency", "--max-write-latency", "250", "milliseconds", "250ms", 250.0),
]


@pytest.mark.parametrize(("name", "flag", "bare", "unit", "spelled", "value"), BARE_DURATIONS)
def test_a_duration_without_a_unit_is_its_old_unit_with_one_warning(name, flag, bare, unit,
                                                                     spelled, value):
    found, warned = shown([flag, bare], {})
    with_unit, none = shown([flag, spelled], {})

    assert found[name]["value"] == with_unit[name]["value"] == spelled and none == []
    assert len(warned) == 1 and warned[0].endswith(
        f"flag {flag}: a number without a unit is read as {unit}; write {spelled} (a number "
        "without a unit is deprecated)"), warned


@pytest.mark.parametrize(("name", "flag", "bare", "unit", "spelled", "value"), BARE_DURATIONS)
def test_a_duration_without_a_unit_in_a_variable_or_the_file_warns_too(
        tmp_path, monkeypatch, name, flag, bare, unit, spelled, value):
    variable = TABLE[name].env_name or ""
    (tmp_path / "cdc-migrator.toml").write_text(f"{name} = {bare}\n")

    from_env, env_warned = shown([], {variable: bare})
    from_file, file_warned = shown([], {}, tmp_path, monkeypatch)

    assert from_env[name]["value"] == from_file[name]["value"] == spelled
    assert [len(env_warned), len(file_warned)] == [1, 1]
    assert f"environment variable {variable}: a number without a unit" in env_warned[0]
    assert f"{name} in config file cdc-migrator.toml: a number without a unit" in \
        file_warned[0]


@pytest.mark.parametrize("name", ["mongo_timeout_ms", "lease_seconds"])
def test_a_bare_number_is_plain_where_the_name_says_the_unit(name):
    flag = TABLE[name].flag_name

    found, warned = shown([flag, "2"], {})
    with_unit, _ = shown([flag, "2m"], {})

    assert warned == []
    assert found[name]["value"] == ("2ms" if name.endswith("_ms") else "2s")
    assert with_unit[name]["value"] == "2m"


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("5s", 5.0), (" 1.5s ", 1.5), ("2m", 120.0), ("1h", 3600.0),
    ("1d", 86_400.0), ("0.3s", 0.3), ("1e1s", 10.0), ("0s", 0.0)])
def test_one_parser_reads_every_unit(text, seconds):
    assert TABLE["retry_deadline"].check(text, Source("flag", "--retry-deadline")) == seconds
    assert OPTIONS["timeout"].check(text, Source("flag", "--timeout")) == seconds


@pytest.mark.parametrize("text", ["5x", "5 sec", "s", "ms5", "5S", "-1s", "400d", "infs",
                                  "1e400s", "5m30s"])
def test_a_duration_the_parser_does_not_read_is_one_line_naming_the_units(text):
    code, _, err = invoke(["config", "show", "--retry-deadline", text], {})

    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0] == (f"cdc-migrator: invalid value {text!r} for flag --retry-deadline: "
                        "expected a duration, a number and its unit (ms, s, m, h, d; e.g. "
                        "250ms, 30s, 5m) from 0s to 365d")


def test_milliseconds_are_whole_where_the_setting_counts_whole_milliseconds():
    spec = TABLE["mongo_timeout_ms"]

    assert spec.check("0.3s", Source("flag", "--mongo-timeout-ms")) == 300
    with pytest.raises(Exception, match="expected a duration"):
        spec.check("1.5ms", Source("flag", "--mongo-timeout-ms"))


@pytest.mark.parametrize(("option", "command"), [
    ("--timeout", ["cutover", NAME]), ("--timeout", ["run", NAME]),
    ("--timeout", ["revert", NAME]), ("--timeout", ["next", "users", "--run"]),
    ("--interval", ["status", NAME, "--watch"])])
def test_a_command_duration_without_a_unit_is_seconds_with_one_warning(option, command):
    # The value is checked while the command line is read; the command then fails to reach
    # MongoDB (exit 1): the warning comes first, once.
    code, _, err = invoke([*command, option, "3"], NOWHERE)

    assert code == 1, err
    assert [w.split(": ", 1)[1] for w in warnings(err) if "deprecated" in w] == [
        f"flag {option}: a number without a unit is read as seconds; write 3s (a number "
        "without a unit is deprecated)"], err
    assert "deprecated" in warnings(err)[0]


def test_settings_environment_spells_durations_with_their_unit():
    env = Settings(retry_deadline=90.0, max_write_latency=1.5,
                   mongo_timeout_ms=2500).environment()

    assert env["CDC_MIGRATOR_RETRY_DEADLINE"] == "90s"
    assert env["CDC_MIGRATOR_MAX_WRITE_LATENCY"] == "1.5ms"
    assert env["CDC_MIGRATOR_MONGO_TIMEOUT_MS"] == "2500ms"
    assert env["CDC_MIGRATOR_MONGODB_URI"] and "MONGODB_URI" not in env


# The client options of the file's [kafka] and [mongo] tables, from variables.

def test_a_kafka_client_option_has_a_variable_that_wins_over_the_file(tmp_path, monkeypatch):
    (tmp_path / "cdc-migrator.toml").write_text(
        '[kafka]\nclient_id = "from-file"\nmetadata_max_age_ms = 60000\n')

    found, warned = shown([], {"CDC_MIGRATOR_KAFKA_OPT_CLIENT_ID": "from-env",
                               "CDC_MIGRATOR_KAFKA_OPT_RECONNECT_BACKOFF_MS": "250"},
                          tmp_path, monkeypatch)

    assert found["kafka"] == {"value": {"client_id": "from-env", "metadata_max_age_ms": 60000,
                                        "reconnect_backoff_ms": 250},
                              "source": "file and env"}
    assert warned == []


def test_a_mongo_client_option_variable_replaces_the_files_spelling_of_it(tmp_path,
                                                                          monkeypatch):
    (tmp_path / "cdc-migrator.toml").write_text('[mongo]\nmaxPoolSize = 5\nappname = "a"\n')

    found, _ = shown([], {"CDC_MIGRATOR_MONGO_OPT_MAXPOOLSIZE": "20",
                          "CDC_MIGRATOR_MONGO_OPT_RETRYWRITES": "false"}, tmp_path, monkeypatch)

    assert found["mongo"]["value"] == {"appname": "a", "maxpoolsize": 20, "retrywrites": False}


def test_client_options_from_variables_reach_the_settings_and_a_secret_is_masked():
    secret = "hunter2-of-the-env"
    env = {"CDC_MIGRATOR_KAFKA_OPT_SASL_PLAIN_PASSWORD": secret,
           "CDC_MIGRATOR_KAFKA_OPT_CLIENT_ID": "cdc", "CDC_MIGRATOR_MONGO_OPT_APPNAME": "cdc"}

    code, out, err = invoke(["config", "show", "--json", "-v"], env)
    text_code, text, text_err = invoke(["config", "show", "-v"], env)

    assert code == 0 == text_code and secret not in out + err + text + text_err
    assert 'sasl_plain_password = "***"' in text
    assert json.loads(out)["kafka"]["value"]["sasl_plain_password"] == "***"
    settings = Settings(kafka_options={"sasl_plain_password": secret, "client_id": "cdc"},
                        mongo_options={"appname": "cdc"})
    assert secret in settings.secrets()
    assert {k: v for k, v in settings.environment().items() if "_OPT_" in k} == {
        "CDC_MIGRATOR_KAFKA_OPT_SASL_PLAIN_PASSWORD": secret,
        "CDC_MIGRATOR_KAFKA_OPT_CLIENT_ID": "cdc", "CDC_MIGRATOR_MONGO_OPT_APPNAME": "cdc"}


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("CDC_MIGRATOR_KAFKA_OPT_CLIENT_IDD", "x", "environment variable "
     "CDC_MIGRATOR_KAFKA_OPT_CLIENT_IDD: 'client_idd' is not a Kafka client option"),
    ("CDC_MIGRATOR_KAFKA_OPT_BOOTSTRAP_SERVERS", "h:1", "'bootstrap_servers' is not a Kafka "
                                                       "client option"),
    ("CDC_MIGRATOR_MONGO_OPT_MAXPOOLSIZ", "5", "'maxpoolsiz' is not a MongoClient option"),
    ("CDC_MIGRATOR_KAFKA_OPT_RECONNECT_BACKOFF_MS", "soon", "invalid value 'soon' for "
     "environment variable CDC_MIGRATOR_KAFKA_OPT_RECONNECT_BACKOFF_MS: expected an integer"),
    ("CDC_MIGRATOR_MONGO_OPT_MAXPOOLSIZE", "-1", "invalid value '-1' for environment variable "
                                                 "CDC_MIGRATOR_MONGO_OPT_MAXPOOLSIZE: expected"),
])
def test_a_client_option_variable_not_taken_is_one_line_and_exit_2(variable, value, message):
    code, _, err = invoke(["config", "show"], {variable: value})

    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err


@pytest.mark.parametrize(("args", "expected"), [([], 60.0), (["--timeout", "90s"], 90.0),
                                                (["--timeout", "2m"], 120.0)])
def test_a_duration_reaches_the_api_in_seconds_its_default_too(monkeypatch, args, expected):
    given: dict[str, Any] = {}

    def record(settings: Any, name: str, **options: Any) -> None:
        given.update(options, retry_deadline=settings.retry_deadline)
        raise SystemExit(0)

    monkeypatch.setattr(api, "cutover", record)

    code, _, err = invoke(["cutover", NAME, *args], {})

    assert code == 0, err
    assert given["timeout"] == expected and given["retry_deadline"] == 300.0
