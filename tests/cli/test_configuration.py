"""The command line's configuration: flag > environment > file > default, `config show`, TLS and
SASL options reaching the clients with their secrets masked, and a bad input refused in one
line, writing nothing."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pymongo
import pytest
from click.testing import CliRunner

from cdc_migrator import api, cli
from cdc_migrator.apply import consumer
from cdc_migrator.base import settings as config
from cdc_migrator.base import topics
from cdc_migrator.base.settings import Settings
from cdc_migrator.migration import get_migration

from ..harness import (
    ITEMS_MIGRATION,
    ROOT,
    run_cli,
    seed_items,
    uri_for,
)

DEFAULT_ROLE = "add_default_role"


# Configuration: flag > environment > file > default, one level each.

def run_in(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``cdc-migrator ARGS`` in ``cwd`` with none of the tool's variables but ``env``."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("CDC_MIGRATOR_")
             and k not in ("MONGODB_URI", "KAFKA_BOOTSTRAP_SERVERS")}  # deprecated aliases
    return subprocess.run([sys.executable, "-m", "cdc_migrator", *args], capture_output=True,
                          text=True, cwd=cwd, env={**clean, **(env or {})}, timeout=60)


def show_config(cwd: Path, *args: str, env: dict | None = None) -> dict[str, Any]:
    result = run_in(cwd, "config", "show", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_configuration_default_applies_without_flag_variable_or_file(tmp_path):
    shown = show_config(tmp_path)

    assert shown["config_file"] is None
    assert shown["topic_prefix"] == {"value": "cdc-migrator", "source": "default"}
    assert shown["partitions"] == {"value": 6, "source": "default"}
    assert shown["metrics_port"] == {"value": None, "source": "default"}


def test_configuration_file_overrides_defaults_and_reaches_the_commands(db, settings, tmp_path):
    (tmp_path / "cdc-migrator.toml").write_text(
        f'mongodb_uri = "{settings.mongodb_uri}"\ntopic_prefix = "from-file"\n'
        f'partitions = 2\nmetrics_port = 9123\ntransforms = "{ROOT / "transforms"}"\n')

    shown = show_config(tmp_path)
    paused = run_in(tmp_path, "pause", DEFAULT_ROLE)

    assert shown["config_file"] == "cdc-migrator.toml"
    assert shown["topic_prefix"] == {"value": "from-file", "source": "file"}
    assert shown["partitions"] == {"value": 2, "source": "file"}
    assert shown["metrics_port"] == {"value": 9123, "source": "file"}
    assert shown["group_prefix"]["source"] == "default"
    assert paused.returncode == 0, paused.stderr
    assert db.cdc_migrator_state.find_one({"_id": DEFAULT_ROLE})["paused"] is True


def test_configuration_environment_overrides_the_file(tmp_path):
    config = tmp_path / "elsewhere.toml"
    config.write_text('topic_prefix = "from-file"\nlog_format = "json"\n')

    shown = show_config(tmp_path, env={"CDC_MIGRATOR_CONFIG": str(config),
                                       "CDC_MIGRATOR_TOPIC_PREFIX": "from-env"})

    assert shown["config_file"] == str(config)
    assert shown["topic_prefix"] == {"value": "from-env", "source": "env"}
    assert shown["log_format"] == {"value": "json", "source": "file"}


def test_configuration_flag_overrides_environment_and_file(tmp_path):
    (tmp_path / "cdc-migrator.toml").write_text('topic_prefix = "from-file"\n')

    shown = show_config(tmp_path, "--topic-prefix", "from-flag",
                        env={"CDC_MIGRATOR_TOPIC_PREFIX": "from-env"})

    assert shown["topic_prefix"] == {"value": "from-flag", "source": "flag"}


def test_an_unknown_key_in_the_configuration_file_is_exit_2_naming_it(tmp_path):
    (tmp_path / "cdc-migrator.toml").write_text('topic_prefix = "x"\ntopic_prefx = "y"\n')

    result = run_in(tmp_path, "status")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key 'topic_prefx'" in lines[0], result.stderr


# init


NAME = "price_total"


PASSWORD = "n0t-f0r-y0ur-eyes"


TRANSFORMS = {"items.py": ITEMS_MIGRATION}


ITEMS_AND_TYPO = ITEMS_MIGRATION + textwrap.dedent('''
    @migration(collection="itemz")
    def typo_target(doc, ctx):
        return {"seen": True}
''')


UNREACHABLE_MONGO = "mongodb://127.0.0.1:1/app?directConnection=true"


WRONG_PASSWORD = f"mongodb://app:{PASSWORD}@{{host}}/{{db}}?directConnection=true"


QUICK = ["--mongo-timeout-ms", "500", "--retry-deadline", "1s"]


BAD_INPUTS = [
    # id, arguments, extra files in the transforms directory, environment, exit code, message
    ("syntax-error", ["apply", NAME], {"broken.py": "def broken(:\n"}, {}, 2,
     "broken.py does not import: SyntaxError"),
    ("raises-on-import", ["backfill", NAME], {"boom.py": "raise RuntimeError('no config')\n"},
     {}, 2, "boom.py does not import: RuntimeError: no config"),
    ("no-collection", ["apply", NAME],
     {"empty.py": "from cdc_migrator import migration\n@migration(collection='')\n"
                  "def f(doc, ctx):\n    pass\n"}, {}, 2, "@migration needs collection"),
    ("duplicate-name", ["run", NAME], {"again.py": ITEMS_MIGRATION}, {}, 2,
     "two migrations are named 'price_total'"),
    ("unknown-name", ["apply", "price_totl"], {}, {}, 2, "no migration named 'price_totl'"),
    ("unknown-name-dlq", ["dlq", "retry", "nope"], {}, {}, 2, "no migration named 'nope'"),
    ("no-transforms-dir", ["apply", NAME, "--transforms", "/nonexistent/transforms"], {}, {}, 2,
     "transforms directory /nonexistent/transforms does not exist"),
    ("batch-size-0", ["apply", NAME, "--batch-size", "0"], {}, {}, 2,
     "invalid value '0' for flag --batch-size: expected an integer from 1"),
    ("negative-rate", ["backfill", NAME, "--rate", "-1"], {}, {}, 2,
     "invalid value '-1' for flag --rate: expected a finite number"),
    ("unknown-flag", ["apply", NAME, "--frobnicate"], {}, {}, 2, "No such option '--frobnicate'"),
    ("negative-deadline", ["consume", NAME, "--retry-deadline", "-5"], {}, {}, 2,
     "invalid value '-5' for flag --retry-deadline: expected a duration"),
    ("bad-protocol", ["consume", NAME, "--kafka-security-protocol", "TLS"], {}, {}, 2,
     "invalid value 'TLS' for flag --kafka-security-protocol: expected one of PLAINTEXT"),
    ("missing-ca-file", ["tail", NAME, "--kafka-ssl-cafile", "/nonexistent/ca.pem"], {}, {}, 2,
     "invalid value '/nonexistent/ca.pem' for flag --kafka-ssl-cafile: expected the path of "
     "an existing file"),
    ("bad-config-file", ["status"], {}, {"CDC_MIGRATOR_CONFIG": "{tmp}/bad.toml"}, 2,
     "is not valid TOML"),
    ("invalid-uri", ["apply", NAME], {}, {"CDC_MIGRATOR_MONGODB_URI": "mongodb://"}, 2,
     "is not a valid MongoDB URI"),
    ("uri-without-database", ["apply", NAME], {},
     {"CDC_MIGRATOR_MONGODB_URI": "mongodb://127.0.0.1:27017/?directConnection=true"}, 2,
     "the MongoDB URI names no database"),
    ("unreachable-mongo", ["apply", NAME, *QUICK], {},
     {"CDC_MIGRATOR_MONGODB_URI": UNREACHABLE_MONGO}, 1,
     "cannot reach MongoDB: 127.0.0.1:1: [Errno 111] Connection refused"),
    ("unreachable-mongo-retried", ["backfill", NAME, *QUICK], {},
     {"CDC_MIGRATOR_MONGODB_URI": UNREACHABLE_MONGO}, 1,
     "MongoDB at 127.0.0.1:1 unavailable for"),
    ("unreachable-kafka", ["dlq", "list", NAME, "--kafka", "127.0.0.1:1", *QUICK], {}, {}, 1,
     "cannot reach Kafka: KafkaTimeoutError: Unable to bootstrap from ['127.0.0.1:1']"),
    ("unreachable-kafka-retried", ["consume", NAME, "--kafka", "127.0.0.1:1", *QUICK], {}, {}, 1,
     "Kafka at 127.0.0.1:1 unavailable for"),
    ("missing-collection-apply", ["apply", "typo_target"], {}, {}, 1,
     "collection 'itemz' does not exist in database"),
    ("missing-collection-dry-run", ["apply", "typo_target", "--dry-run"], {}, {}, 1,
     "collection 'itemz' does not exist in database"),
    ("missing-collection-backfill", ["backfill", "typo_target"], {}, {}, 1,
     "collection 'itemz' does not exist in database"),
    ("wrong-password", ["apply", NAME, "--kafka-sasl-password", PASSWORD], {},
     {"CDC_MIGRATOR_MONGODB_URI": WRONG_PASSWORD}, 1, "MongoDB authentication failed"),
    ("cutover-not-started", ["cutover", NAME], {}, {}, 1, "the migration has not started"),
]


def snapshot(db) -> tuple:
    """Everything a command could have written: collections, their documents."""
    return tuple((name, tuple(map(repr, db[name].find(sort=[("_id", 1)]))))
                 for name in sorted(db.list_collection_names()))


@pytest.mark.parametrize(("args", "files", "env", "code", "message"),
                         [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_a_bad_input_is_refused_with_one_line_and_writes_nothing(db, settings, tmp_path, args,
                                                                 files, env, code, message):
    transforms = tmp_path / "transforms"
    transforms.mkdir()
    (transforms / "items.py").write_text(ITEMS_AND_TYPO)
    for name, text in files.items():
        (transforms / name).write_text(text)
    (tmp_path / "bad.toml").write_text("partitions = \n")
    settings.transforms = transforms
    seed_items(db.items, random.Random(1), 20)
    host = uri_for(db.name).split("://")[1].split("/")[0].rpartition("@")[2]  # no user
    env = {k: v.format(tmp=tmp_path, host=host, db=db.name) for k, v in env.items()}
    before = snapshot(db)

    result = run_cli(*args, settings=settings, env=env, timeout=60)

    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert message in output
    assert "Traceback" not in output
    assert PASSWORD not in output
    if code == 1 and message in result.stderr:  # one line, after one warning per outage
        errors = [line for line in result.stderr.splitlines() if line.startswith("cdc-migrator:")]
        assert len(errors) == 1 and message in errors[0], result.stderr
    assert snapshot(db) == before, "a refused command wrote to the database"


SECURE_FLAGS = ["--kafka-security-protocol", "sasl_ssl", "--kafka-sasl-mechanism",
                "SCRAM-SHA-512", "--kafka-sasl-username", "cdc", "--kafka-ssl-cafile", "{ca}",
                "--mongo-tls-ca-file", "{ca}", "--mongo-tls-cert-key-file", "{cert}",
                "--mongo-tls-insecure"]


def settings_from_cli(monkeypatch, args: list[str], env: dict[str, str]) -> Settings:
    """The Settings the command line builds from ``args`` and ``env`` (``status`` captured)."""
    captured: list[Settings] = []
    monkeypatch.setattr(api, "status", lambda s, name=None: captured.append(s) or [])
    result = CliRunner().invoke(cli.cli, ["status", *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (settings,) = captured
    return settings


def test_tls_and_sasl_options_reach_the_kafka_and_mongo_clients(monkeypatch, tmp_path):
    ca, cert = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.write_text("CA")
    cert.write_text("CERT")
    (tmp_path / "file.pem").write_text("CA OF THE FILE")
    (tmp_path / "cdc-migrator.toml").write_text(
        '[kafka]\nclient_id = "from-file"\nsecurity_protocol = "PLAINTEXT"\n'
        f'[mongo]\ntlscafile = "{tmp_path / "file.pem"}"\nappname = "from-file"\n')
    monkeypatch.chdir(tmp_path)
    args = [a.format(ca=ca, cert=cert) for a in SECURE_FLAGS]
    settings = settings_from_cli(monkeypatch, args,
                                 {"CDC_MIGRATOR_KAFKA_SASL_PASSWORD": PASSWORD,
                                  "CDC_MIGRATOR_RETRY_DEADLINE": "42s",
                                  "CDC_MIGRATOR_MONGO_TIMEOUT_MS": "1234"})
    made: dict[str, dict] = {}

    def fake(kind: str) -> Callable[..., Any]:
        def make(*args: Any, **options: Any) -> mock.MagicMock:
            made[kind] = options
            return mock.MagicMock()
        return make

    for module, kind in ((topics, "KafkaProducer"), (topics, "KafkaAdminClient"),
                         (consumer, "KafkaConsumer")):
        monkeypatch.setattr(module, kind, fake(kind))
    monkeypatch.setattr(config.pymongo, "MongoClient", fake("MongoClient"))
    topics.producer(settings)
    topics.admin(settings)
    consumer.TransformConsumer(settings, get_migration(ROOT / "transforms",
                                                       "add_default_role"))._connect()
    _ = settings.client

    assert settings.retry_deadline == 42 and settings.mongo_timeout_ms == 1234
    for kind in ("KafkaProducer", "KafkaAdminClient", "KafkaConsumer"):
        assert {k: made[kind][k] for k in ("security_protocol", "sasl_mechanism",
                                           "sasl_plain_username", "sasl_plain_password",
                                           "ssl_cafile", "client_id")} == {
            "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "cdc", "sasl_plain_password": PASSWORD,
            "ssl_cafile": str(ca), "client_id": "from-file"}, kind
    mongo = made["MongoClient"]
    assert {k: mongo[k] for k in ("tls", "tlsCAFile", "tlsCertificateKeyFile", "tlsInsecure",
                                  "appname", "serverSelectionTimeoutMS")} == {
        "tls": True, "tlsCAFile": str(ca), "tlsCertificateKeyFile": str(cert),
        "tlsInsecure": True, "appname": "from-file", "serverSelectionTimeoutMS": 1234}
    assert "tlscafile" not in mongo, "the flag replaces the file's spelling of the option"


def test_the_mongo_tls_flags_build_a_tls_client(monkeypatch, tmp_path):
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if not bundle.is_file():
        pytest.skip("no system CA bundle to load")
    settings = settings_from_cli(monkeypatch, ["--mongo-tls-ca-file", str(bundle),
                                               "--mongo-tls-insecure"], {})
    client = pymongo.MongoClient(settings.mongodb_uri, connect=False,
                                 **settings.mongo_client_options)
    try:
        assert client.options.pool_options._ssl_context is not None
        assert client.options.pool_options.tls_allow_invalid_hostnames
    finally:
        client.close()


def test_kafka_secrets_are_masked_in_config_show_and_in_every_log_line(db, settings):
    from_env = run_cli("config", "show", "--json",
                       env={"CDC_MIGRATOR_KAFKA_SASL_PASSWORD": PASSWORD})
    from_flag = run_cli("config", "show", "--kafka-ssl-password", PASSWORD,
                        "--kafka-sasl-username", "cdc")
    # -vv: the Kafka client logs its whole configuration, SASL password included.
    logged = run_cli("status", "-vv", "--kafka-sasl-password", PASSWORD, settings=settings)

    assert json.loads(from_env.stdout)["kafka_sasl_password"] == {"value": "***",
                                                                  "source": "env"}
    assert 'kafka_ssl_password = "***"  # flag' in from_flag.stdout
    assert 'kafka_sasl_username = "cdc"  # flag' in from_flag.stdout
    assert logged.returncode in (0, 1), logged.stderr
    for result in (from_env, from_flag, logged):
        assert PASSWORD not in result.stdout + result.stderr
