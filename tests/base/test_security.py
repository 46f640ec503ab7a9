"""Secrets stay secret and connections fail clearly: URI masking whatever the password holds,
invalid URI options refused, and Kafka over TLS and SASL/SCRAM (the local broker's SSL and
SASL_SSL listeners) end to end, with one clear line for a wrong password or an untrusted
certificate."""

from __future__ import annotations

import json
import socket
import string
import subprocess
import sys
import urllib.parse
import uuid

import kafka
import pymongo
import pytest
from bson import json_util
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from kafka import KafkaAdminClient
from kafka.admin import UserScramCredentialDeletion, UserScramCredentialUpsertion
from kafka.net.selector import NetworkSelector
from kafka.net.transport import KafkaSSLTransport, KafkaTCPTransport

from cdc_migrator import api, configfile
from cdc_migrator.base import refusals, retry  # noqa: F401  (refusals: mends kafka-python)
from cdc_migrator.base.masking import mask_secrets, mask_uri, uri_secrets
from cdc_migrator.capture.tailer import arm

from ..harness import (
    KAFKA,
    KAFKA_CA,
    KAFKA_SASL_SSL,
    KAFKA_SSL,
    ROOT,
    SCRAM_PASSWORD,
    SCRAM_USER,
    CliProcess,
    Service,
    local_mongo_missing,
    part_of,
    run_cli,
    start_local_mongo,
    stop_local_mongo,
    wait_for,
)

NAME = "add_default_role"

HOSTS = "db0.example.net:27017,db1.example.net:27018"
TAIL = "/app?replicaSet=rs0&authSource=admin"
# Any character at all may end up in a password typed by hand, escaped or not.
PASSWORDS = st.text(min_size=1, max_size=40)
USERS = st.text(alphabet=string.ascii_letters + string.digits + "._-%@:/", min_size=1,
                max_size=12)


@given(user=USERS, password=PASSWORDS)
def test_masking_hides_every_credential_of_a_uri_whatever_the_password_holds(user, password):
    uri = f"mongodb://{user}:{password}@{HOSTS}{TAIL}"

    assert mask_uri(uri) == f"mongodb://***@{HOSTS}{TAIL}"
    assert retry._hosts(uri) == HOSTS


@given(user=USERS, password=PASSWORDS.filter(lambda p: "*" not in p))
@example(user="0", password=" ")  # a space ended the URI's credentials before the "@"
@example(user="0", password="\n")  # a line break did too
def test_masking_hides_a_password_inside_any_message(user, password):
    uri = f"mongodb+srv://{user}:{password}@{HOSTS}{TAIL}"
    message = f"ServerSelectionTimeoutError: cannot use {uri} now: connection refused"

    masked = mask_secrets(message, *uri_secrets(uri))

    assert f"***@{HOSTS}{TAIL} now: connection refused" in masked
    if len(password) >= 4:  # shorter ones are masked only inside the URI
        assert password not in masked
    if not any(c.isspace() for c in password):
        assert masked == f"ServerSelectionTimeoutError: cannot use mongodb+srv://***@{HOSTS}" \
                         f"{TAIL} now: connection refused"


@given(secret=st.text(min_size=4), before=st.text(max_size=5), after=st.text(max_size=5))
def test_masking_hides_a_registered_secret_in_every_form_text_gives_it(secret, before, after):
    for form in forms_of(secret):
        text = f"{before}{form}{after}"

        masked = mask_secrets(text, secret)

        assert form not in masked or form in f"{before}***{after}", (form, masked)


@pytest.mark.parametrize("text", [
    "configuration: {'sasl_plain_password': 'pw', 'ssl_password': \"x\\\"y\", 'a': 1}",
    '{"password": "p\\"w", "other": 1}',
    "connecting with user=u&password=pw;x",
])
def test_masking_hides_any_value_a_key_names_as_a_password_or_secret(text):
    masked = mask_secrets(text)

    assert "pw" not in masked and "x\\\"y" not in masked and "***" in masked, masked


def test_masking_leaves_a_uri_without_credentials_and_other_text_alone():
    for text in ("mongodb://127.0.0.1:27017/app?directConnection=true", "no uri here @ all",
                 "mongodb://", ""):
        assert mask_uri(text) == text
        assert mask_secrets(text) == text


@pytest.mark.parametrize("userinfo", ["u:pa/ss3cret", "u:p@ssSECRET", "u:p:w/SECRET?x"])
def test_a_malformed_uri_never_prints_its_password(settings, userinfo):
    host = settings.mongodb_uri.split("://")[1].split("/")[0]
    uri = f"mongodb://{userinfo}@{host}/app?directConnection=true"

    for args in (["apply", "add_default_role"], ["status"], ["backfill", "add_default_role"]):
        result = run_cli(*args, settings=settings, env={"CDC_MIGRATOR_MONGODB_URI": uri},
                         timeout=60)

        output = result.stdout + result.stderr
        assert result.returncode == 2, output
        assert "is not a valid MongoDB URI" in output and "Traceback" not in output
        secret = userinfo.partition(":")[2]
        assert secret not in output and "SECRET" not in output and "ss3cret" not in output


@pytest.mark.parametrize("option", ["directConnection=maybe", "tls=perhaps", "retryWrite=true"])
@pytest.mark.parametrize("with_db", [False, True])
def test_an_invalid_uri_option_is_a_usage_error(settings, option, with_db):
    base = settings.mongodb_uri.split("?")[0]
    args = ["status", *(["--db", "app"] if with_db else [])]

    result = run_cli(*args, settings=settings, env={"CDC_MIGRATOR_MONGODB_URI": f"{base}?{option}"})

    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("cdc-migrator: the MongoDB URI ") \
        and "is not a valid MongoDB URI" in line


# Kafka over TLS and SASL/SCRAM: the local broker's SSL and SASL_SSL listeners.

def sasl_ssl(mechanism: str = "SCRAM-SHA-512", password: str = SCRAM_PASSWORD) -> dict:
    return {"CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS": KAFKA_SASL_SSL,
            "CDC_MIGRATOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "CDC_MIGRATOR_KAFKA_SASL_MECHANISM": mechanism,
            "CDC_MIGRATOR_KAFKA_SASL_USERNAME": SCRAM_USER,
            "CDC_MIGRATOR_KAFKA_SASL_PASSWORD": password,
            "CDC_MIGRATOR_KAFKA_SSL_CAFILE": str(KAFKA_CA)}


def ssl_only(cafile: bool = True) -> dict:
    return {"CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS": KAFKA_SSL,
            "CDC_MIGRATOR_KAFKA_SECURITY_PROTOCOL": "SSL",
            **({"CDC_MIGRATOR_KAFKA_SSL_CAFILE": str(KAFKA_CA)} if cafile else {})}


def seed_users(db, n: int = 300) -> None:
    db.users.insert_many([{"_id": i, "name": f"u{i}"} for i in range(n)])


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_tail_backfill_consume_and_cutover_over_sasl_ssl(db, settings, tls_listeners,
                                                         mechanism):
    seed_users(db)
    env = sasl_ssl(mechanism)
    tail = CliProcess(settings, "tail", NAME, env=env)
    consume = CliProcess(settings, "consume", NAME, env=env)
    try:
        wait_for(lambda: part_of(db, NAME, "tail"),
                 what="capture armed over SASL_SSL")
        backfill = run_cli("backfill", NAME, "-q", settings=settings, env=env)
        db.users.insert_one({"_id": 1000, "name": "written during the migration"})
        wait_for(lambda: db.users.count_documents({"role": "user"}) == 301, what="all migrated")
        cutover = run_cli("cutover", NAME, "--timeout", "60s", settings=settings, env=env)
    finally:
        codes = [tail.stop(), consume.stop()]

    assert backfill.returncode == 0, backfill.stderr
    assert cutover.returncode == 0, cutover.stdout + cutover.stderr
    assert codes == [0, 0], tail.log + consume.log
    for output in (backfill.stdout, backfill.stderr, cutover.stdout, tail.log, consume.log):
        assert SCRAM_PASSWORD not in output


def test_run_and_status_over_ssl(db, settings, tls_listeners):
    seed_users(db)

    ran = run_cli("run", NAME, "--timeout", "60s", "-q", settings=settings, env=ssl_only())
    status = run_cli("status", NAME, "--json", settings=settings, env=ssl_only())

    assert ran.returncode == 0, ran.stderr
    assert db.users.count_documents({"role": "user"}) == 300
    assert json.loads(status.stdout)["lag"]["total"] == 0


REFUSED = [
    # what, environment, the commands tried, the cause named
    ("wrong-password", sasl_ssl(password="not-the-password"), ["consume", "backfill"],
     "cdc-migrator: Kafka refused the SASL credentials (Authentication failed during "
     "authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512): check "
     "--kafka-sasl-mechanism, --kafka-sasl-username and --kafka-sasl-password"),
    ("untrusted-certificate", ssl_only(cafile=False), ["tail", "status"],
     "cdc-migrator: the Kafka broker's TLS certificate is not trusted (self-signed certificate "
     "in certificate chain): give the CA that signed it with --kafka-ssl-cafile"),
]


@pytest.mark.parametrize(("env", "commands", "message"), [r[1:] for r in REFUSED],
                         ids=[r[0] for r in REFUSED])
def test_a_refused_kafka_connection_is_one_line_and_exit_1_not_a_retry_loop(
        db, settings, tls_listeners, env, commands, message):
    seed_users(db, 10)
    arm(settings, api.load(settings, NAME))  # over plaintext, so backfill gets to Kafka

    for command in commands:
        # The default retry deadline (300 s) stays: the refusal must end it, not the deadline.
        # (A bootstrap attempt then lasts 10 s: on a SASL listener the client's first
        # connection is dropped before it authenticates, the second one is refused.)
        result = run_cli(command, *([NAME] if command != "status" else []), settings=settings,
                         env=env, timeout=45)

        assert result.returncode == 1, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("cdc-migrator:")]
        assert lines == [message], result.stderr
        assert "Traceback" not in result.stderr and "not-the-password" not in result.stderr
        assert "retrying with backoff" not in result.stderr


def test_an_untrusted_mongodb_certificate_is_one_line_and_exit_1_not_a_retry_loop(
        settings, tls_listeners):
    # A real TLS server whose certificate this client does not trust: the broker's SSL port.
    env = {"CDC_MIGRATOR_MONGODB_URI": f"mongodb://{KAFKA_SSL}/app?directConnection=true&tls=true",
           "CDC_MIGRATOR_MONGO_TIMEOUT_MS": "2000"}

    for command in (["backfill", NAME], ["status"]):
        result = run_cli(*command, settings=settings, env=env, timeout=45)

        assert result.returncode == 1, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("cdc-migrator:")]
        assert lines == ["cdc-migrator: MongoDB's TLS certificate is not trusted (self-signed "
                         "certificate in certificate chain): give the CA that signed it with "
                         "--mongo-tls-ca-file"], result.stderr
        assert "retrying with backoff" not in result.stderr


def test_an_answer_that_arrives_with_the_close_reaches_the_kafka_client_first():
    """A broker refusing SASL credentials sends its answer and closes. kafka-python 3.0.12
    dropped an answer read together with the close, so the refusal was not seen and the
    command retried the "outage" instead (about half of the wrong-password runs here)."""
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    broker.sendall(b"the broker's answer")
    broker.close()  # both are waiting before the client reads
    net = NetworkSelector()
    transport = KafkaTCPTransport(net, ours)
    seen: list[tuple[str, object]] = []

    class Connection:
        _sensors = None

        def data_received(self, data: bytes) -> None:
            seen.append(("data", data))

        def connection_lost(self, exc: BaseException | None) -> None:
            seen.append(("lost", type(exc).__name__))

    transport.set_protocol(Connection())
    transport.resume_reading()
    try:
        for _ in range(50):
            if any(kind == "lost" for kind, _ in seen):
                break
            net.poll(timeout_ms=100)
    finally:
        net.close()

    assert seen == [("data", b"the broker's answer"), ("lost", "KafkaConnectionError")]


# Secrets of any text, masked in every form they take, on every path.

def forms_of(secret: str) -> set[str]:
    """What ``secret`` looks like in text, worked out here apart from the code under test:
    raw, as repr and JSON escape it, percent-encoded, its UTF-8 bytes' repr; and each of those
    escaped again by repr and by JSON (a JSON log line escapes its message)."""
    encoded = secret.encode()
    forms = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1],
             json.dumps(secret, ensure_ascii=False)[1:-1], repr(encoded)[2:-1],
             urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
             urllib.parse.quote(secret)}
    return forms | {repr(f)[1:-1] for f in forms} | {json.dumps(f)[1:-1] for f in forms} \
        | {json.dumps(f, ensure_ascii=False)[1:-1] for f in forms}


def scram_user(name: str, password: str | None) -> None:
    """Give the local broker's SCRAM user ``name`` this password (None: no credential)."""
    client = KafkaAdminClient(bootstrap_servers=KAFKA)
    try:
        if password is None:
            client.alter_user_scram_credentials(
                [UserScramCredentialDeletion(name, "SCRAM-SHA-512")])
        else:
            client.alter_user_scram_credentials(
                [UserScramCredentialUpsertion(name, "SCRAM-SHA-512", password)])
            # The broker authenticates from its metadata, which describe reads too.
            wait_for(lambda: not client.describe_user_scram_credentials([name])[name]["error"],
                     what=f"SCRAM user {name} known to the broker")
    finally:
        client.close()


def sasl_file(path, user: str, password: str):
    """A configuration file giving SASL_SSL with ``password`` (any character: the file is the
    one source a NUL can come from)."""
    path.write_text(
        'kafka_security_protocol = "SASL_SSL"\nkafka_sasl_mechanism = "SCRAM-SHA-512"\n'
        f'kafka_sasl_username = "{user}"\nkafka_ssl_cafile = "{KAFKA_CA}"\n'
        f"kafka_sasl_password = {configfile._toml_string(password)}\n")
    return path


SECRET_PART = st.text(alphabet=st.one_of(st.characters(), st.sampled_from("\\\"'\n\r\t\x00%+@:/ ")),
                      max_size=8)
# A marker in the middle makes each secret unlike any text the tool prints itself.
SECRETS = st.tuples(SECRET_PART, SECRET_PART).map(lambda parts: f"{parts[0]}Zq7{parts[1]}")


@pytest.fixture(scope="module")
def secured_mongo(tmp_path_factory):
    """A local server of the module's own with access control on (``-Dauth=true``), and a
    client of its root user."""
    if (missing := local_mongo_missing()) is not None:
        pytest.skip(missing)
    proc, anonymous = start_local_mongo(tmp_path_factory.mktemp("secured"), auth=True)
    anonymous.admin.command("createUser", "root", pwd="root-secret", roles=["root"])
    host, port = anonymous.address
    root = pymongo.MongoClient(f"mongodb://root:root-secret@{host}:{port}/?directConnection=true",
                               serverSelectionTimeoutMS=10_000)
    yield root, f"{host}:{port}"
    root.close()
    stop_local_mongo(proc, anonymous)


def mongo_user(root: pymongo.MongoClient, host: str, db_name: str,
               password: str) -> tuple[str, str]:
    """A user of the secured server whose password is ``password``: its name, and the URI that
    logs in as it. SCRAM-SHA-1, whose password takes any character (SCRAM-SHA-256's SASLprep refuses
    control characters)."""
    name = f"prop-{uuid.uuid4().hex[:8]}"
    root.admin.command("createUser", name, pwd=password, roles=["root"],
                       mechanisms=["SCRAM-SHA-1"])
    return name, (f"mongodb://{name}:{urllib.parse.quote(password, safe='')}@{host}/{db_name}"
                  "?authSource=admin&authMechanism=SCRAM-SHA-1&directConnection=true")


@pytest.mark.services
@hypothesis_settings(max_examples=3, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])
@example(secret='a\nb\\c"d\'Zq7\x00é😀 %2B+@:/')
@example(secret="Zq7\\n\\u0041")
@given(secret=SECRETS)
def test_a_secret_never_shows_in_any_form_on_any_path(db, settings, tls_listeners, tmp_path,
                                                      secured_mongo, secret):
    """The SASL password and the MongoDB password, of any characters, at -vv in text and JSON
    logs, in `status`, `config show`, metrics and the state, when the run succeeds and when
    the password is refused. The MongoDB password's success path runs on a local server with
    access control of the test's own (a user whose password is the secret); its refusal path,
    and the SASL password's every path, on the shared services."""
    db.client.drop_database(db.name)
    seed_users(db, 50)
    user = f"prop-{uuid.uuid4().hex[:8]}"
    scram_user(user, secret)
    root, secured_host = secured_mongo
    secured_db = root[db.name]
    root.drop_database(db.name)
    seed_users(secured_db, 20)
    mongo_name, mongo_uri = mongo_user(root, secured_host, db.name, secret)
    logged_in = {"CDC_MIGRATOR_MONGODB_URI": mongo_uri}
    good = {"CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS": KAFKA_SASL_SSL,
            "CDC_MIGRATOR_CONFIG": str(sasl_file(tmp_path / "good.toml", user, secret))}
    wrong = {**good, "CDC_MIGRATOR_CONFIG": str(sasl_file(tmp_path / "wrong.toml",
                                                          f"{user}-none", secret))}
    host = settings.mongodb_uri.split("://")[1].split("/")[0]
    with_password = {"CDC_MIGRATOR_MONGODB_URI":
                     f"mongodb://u:{urllib.parse.quote(secret, safe='')}@{host}"
                     f"/{db.name}?directConnection=true&serverSelectionTimeoutMS=3000"}
    seen: dict[str, str] = {}
    try:
        with Service(settings, "run", NAME, "-vv", "--log-format", "json", "--timeout", "120s",
                     "-q", env=good) as run:
            seen["metrics"] = run.get("/metrics")[1]
            assert run.wait() == 0, run.log[-3000:]
        seen["run"] = run.log + run.output
        for what, args, env in [
            ("status -vv", ["status", "-vv"], good),
            ("status --json", ["status", NAME, "--json"], good),
            ("config show", ["config", "show"], good),
            ("config show --json", ["config", "show", "--json", "-vv"], {**good, **with_password}),
            ("refused SASL", ["consume", NAME, "-vv", "--log-format", "json"], wrong),
            ("refused MongoDB", ["status", "-vv"], {**good, **with_password}),
            ("apply, MongoDB password", ["apply", NAME, "-vv", "--log-format", "json"],
             logged_in),
            ("status, MongoDB password", ["status", "-vv"], {**good, **logged_in}),
            ("config show, MongoDB password", ["config", "show", "--json"], logged_in),
        ]:
            result = run_cli(*args, settings=settings, env=env, timeout=120)
            seen[what] = result.stdout + result.stderr
            assert result.returncode == (1 if what.startswith("refused") else 0), seen[what]
        seen["state"] = json_util.dumps(list(db.cdc_migrator_state.find())
                                        + list(secured_db.cdc_migrator_state.find()))
    finally:
        scram_user(user, None)
        root.admin.command("dropUser", mongo_name)
    assert db.users.count_documents({"role": "user"}) == 50
    assert secured_db.users.count_documents({"role": "user"}) == 20
    assert "Kafka refused the SASL credentials" in seen["refused SASL"]
    assert "MongoDB authentication failed" in seen["refused MongoDB"]
    for what, text in seen.items():
        for form in forms_of(secret):
            assert form not in text, f"{what} shows the secret as {form!r}"


# The client pin: base/refusals.py patches a private method of kafka-python.

def test_kafka_python_is_pinned_to_the_release_the_patch_is_tested_on():
    pyproject = (ROOT / "pyproject.toml").read_text()

    assert f'"kafka-python=={refusals.TESTED_KAFKA_PYTHON}"' in pyproject
    assert kafka.__version__ == refusals.TESTED_KAFKA_PYTHON


def test_the_patched_method_of_the_installed_kafka_python_is_the_one_expected():
    classes = (KafkaTCPTransport, KafkaSSLTransport)

    refusals.check_patch_target(classes, kafka.__version__)

    assert all(hasattr(cls.__dict__["_sock_recv"], "__wrapped__") for cls in classes)


class Inherited(KafkaTCPTransport):
    """A transport whose _sock_recv is its base's: patching it would patch nothing here."""


class Reshaped(KafkaTCPTransport):
    def _sock_recv(self, size):  # another signature: the patch would break it
        return super()._sock_recv()


@pytest.mark.parametrize("cls", [Inherited, Reshaped])
def test_a_kafka_python_without_the_patched_method_fails_loudly(cls):
    with pytest.raises(ImportError) as raised:
        refusals.check_patch_target((KafkaTCPTransport, cls), "9.9.9")

    assert str(raised.value) == (
        f"cdc-migrator patches {cls.__module__}.{cls.__name__}._sock_recv(self), which "
        f"kafka-python 9.9.9 does not define: install kafka-python=="
        f"{refusals.TESTED_KAFKA_PYTHON}, the release it is tested on")


def test_the_command_line_does_not_start_on_a_kafka_python_lacking_the_patched_method():
    lacking = ("from kafka.net import transport\n"
               "del transport.KafkaSSLTransport._sock_recv\n"
               "from cdc_migrator.cli import main\n"
               "main(['status'])\n")

    result = subprocess.run([sys.executable, "-c", lacking], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)

    assert result.returncode != 0
    assert ("ImportError: cdc-migrator patches kafka.net.transport.KafkaSSLTransport."
            "_sock_recv(self), which kafka-python") in result.stderr
