"""Kafka as managed services offer it: SASL OAUTHBEARER with OIDC tokens (a token endpoint of the
test's own issuing RS256 JWTs for client credentials, validated by Kafka's own OIDC validator
against its JWKS), a cap on the record size topics may ask for, and AWS_MSK_IAM as far as it
can be tried without MSK.

The broker is one of this module's own: its SASL_SSL listener takes OAUTHBEARER only, and a
policy (services/kafka/RecordSizeCap.java) refuses topics asking for records above 1 MiB, as
Confluent Cloud refuses more than its cap.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource

from cdc_migrator import api
from cdc_migrator.base import tokens, topics
from cdc_migrator.base.settings import Settings
from cdc_migrator.capture.tailer import arm
from cdc_migrator.errors import UsageError

from ..harness import (
    KAFKA_CA,
    KAFKA_SASL_SSL,
    ROOT,
    CliProcess,
    PrivateKafka,
    cli_env,
    part_of,
    private_kafka_missing,
    run_cli,
    wait_for,
)

NAME = "add_default_role"
CLIENT_ID, CLIENT_SECRET = "cdc-migrator", "oidc-client-secret-of-the-test"
AUDIENCE = "kafka"
CAP = 1 << 20  # the private broker's cap on a topic's max.message.bytes
BROKER_DEFAULT = 512 << 10  # its message.max.bytes: what a topic gets without asking


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class TokenEndpoint:
    """An OIDC provider's two endpoints: ``POST /token`` (client credentials with HTTP Basic,
    answering an RS256 JWT) and ``GET /jwks`` (its public key). Counts the tokens issued."""

    def __init__(self, lifetime: int = 3600) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        self.lifetime = lifetime
        self.issued = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/jwks":
                    self._reply(200, endpoint.jwks())
                else:
                    self._reply(404, {})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                expected = "Basic " + base64.b64encode(
                    f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
                if self.path != "/token" or "grant_type=client_credentials" not in body:
                    self._reply(400, {"error": "unsupported_grant_type"})
                elif self.headers.get("Authorization") != expected:
                    self._reply(401, {"error": "invalid_client"})
                else:
                    endpoint.issued += 1
                    self._reply(200, {"access_token": endpoint.mint(), "token_type": "Bearer",
                                      "expires_in": endpoint.lifetime})

            def _reply(self, status: int, answer: dict) -> None:
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def mint(self, key: Any = None) -> str:
        """A JWT for the client, signed with ``key`` (default: this provider's)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        claims = {"iss": self.url, "sub": CLIENT_ID, "aud": AUDIENCE, "iat": now,
                  "exp": now + self.lifetime, "scope": "kafka"}
        signing = ".".join(b64url(json.dumps(part).encode()) for part in (header, claims))
        signature = (key or self.key).sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{b64url(signature)}"

    def jwks(self) -> dict:
        numbers = self.key.public_key().public_numbers()

        def as_b64(n: int) -> str:
            return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

        return {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                          "n": as_b64(numbers.n), "e": as_b64(numbers.e)}]}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def oidc():
    pytest.importorskip("cryptography")
    endpoint = TokenEndpoint()
    yield endpoint
    endpoint.close()


@pytest.fixture(scope="module")
def _managed_broker(tmp_path_factory, oidc, local_servers):
    if (missing := private_kafka_missing()) is not None:
        pytest.skip(missing)
    if not KAFKA_CA.is_file():
        pytest.skip("no .services/tls/ca.pem: start the services with scripts/services.sh up")
    jwks = f"{oidc.url}/jwks"
    handler = "org.apache.kafka.common.security.oauthbearer"
    broker = PrivateKafka(tmp_path_factory.mktemp("managed-kafka"), properties="\n".join([
        "sasl.enabled.mechanisms=OAUTHBEARER",
        f"listener.name.sasl_ssl.oauthbearer.sasl.jaas.config={handler}."
        "OAuthBearerLoginModule required;",
        "listener.name.sasl_ssl.oauthbearer.sasl.server.callback.handler.class="
        f"{handler}.OAuthBearerValidatorCallbackHandler",
        f"sasl.oauthbearer.jwks.endpoint.url={jwks}",
        f"sasl.oauthbearer.expected.audience={AUDIENCE}",
        f"sasl.oauthbearer.expected.issuer={oidc.url}",
        # Kafka 4.1's default validator checks no signature on a broker: the broker's does.
        f"sasl.oauthbearer.jwt.validator.class={handler}.BrokerJwtValidator",
        "create.topic.policy.class.name=RecordSizeCap",
        f"cdc.test.max.message.bytes.cap={CAP}",
        f"message.max.bytes={BROKER_DEFAULT}",
    ]), jvm=[f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={jwks}"])
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def managed_kafka(_managed_broker, settings):
    """The module's broker, the settings pointed at its plaintext listener (the tests give
    the OAUTHBEARER connection through the environment)."""
    settings.kafka_bootstrap_servers = _managed_broker.bootstrap
    return _managed_broker


def oauthbearer(broker: PrivateKafka, **oauth: str) -> dict[str, str]:
    """The environment of an OAUTHBEARER connection to ``broker`` over TLS, with the
    ``CDC_MIGRATOR_KAFKA_SASL_OAUTH_*`` variables named by ``oauth``'s keys."""
    return {"CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS": broker.sasl_ssl,
            "CDC_MIGRATOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "CDC_MIGRATOR_KAFKA_SSL_CAFILE": str(KAFKA_CA),
            "CDC_MIGRATOR_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            **{f"CDC_MIGRATOR_KAFKA_SASL_OAUTH_{k.upper()}": v for k, v in oauth.items()}}


def client_credentials(broker: PrivateKafka, oidc: TokenEndpoint,
                       secret: str = CLIENT_SECRET) -> dict[str, str]:
    return oauthbearer(broker, token_url=f"{oidc.url}/token", client_id=CLIENT_ID,
                       client_secret=secret, scope="kafka")


def token_command(broker: PrivateKafka, token: str, tmp_path: Path) -> dict[str, str]:
    """A command printing ``token``, as a secret manager's CLI would."""
    (tmp_path / "token").write_text(token + "\n")
    return oauthbearer(broker, token_command=f"cat {tmp_path / 'token'}")


def seed_users(db, n: int = 300) -> None:
    db.users.insert_many([{"_id": i, "name": f"u{i}"} for i in range(n)])


def cli_errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("cdc-migrator:")]


# OAUTHBEARER

def test_tail_backfill_consume_and_cutover_over_oauthbearer_with_client_credentials(
        db, settings, managed_kafka, oidc):
    seed_users(db)
    env = client_credentials(managed_kafka, oidc)
    issued = oidc.issued
    tail = CliProcess(settings, "tail", NAME, env=env)
    consume = CliProcess(settings, "consume", NAME, env=env)
    try:
        wait_for(lambda: part_of(db, NAME, "tail"), what="capture armed over OAUTHBEARER")
        backfill = run_cli("backfill", NAME, "-q", settings=settings, env=env)
        db.users.insert_one({"_id": 1000, "name": "written during the migration"})
        wait_for(lambda: db.users.count_documents({"role": "user"}) == 301, what="all migrated")
        cutover = run_cli("cutover", NAME, "--timeout", "60s", settings=settings, env=env)
    finally:
        codes = [tail.stop(), consume.stop()]

    assert backfill.returncode == 0, backfill.stderr
    assert cutover.returncode == 0, cutover.stdout + cutover.stderr
    assert codes == [0, 0], tail.log + consume.log
    # Each process asked for one token, however many connections it opened.
    assert oidc.issued - issued == 4
    for output in (backfill.stderr, cutover.stdout, cutover.stderr, tail.log, consume.log):
        assert CLIENT_SECRET not in output


def test_run_over_oauthbearer_with_a_token_command(db, settings, managed_kafka, oidc,
                                                    tmp_path):
    seed_users(db)
    token = oidc.mint()
    env = token_command(managed_kafka, token, tmp_path)

    # -vv: the Kafka client logs its SASL messages, the token in them.
    ran = run_cli("run", NAME, "--timeout", "60s", "-vv", settings=settings, env=env)

    assert ran.returncode == 0, ran.stderr[-3000:]
    assert db.users.count_documents({"role": "user"}) == 300
    assert "auth=Bearer ***" in ran.stderr
    assert token not in ran.stderr and token.split(".")[2] not in ran.stderr


def test_a_wrong_client_secret_is_one_line_and_exit_1_not_a_retry_loop(db, settings,
                                                                       managed_kafka, oidc):
    seed_users(db, 10)
    arm(settings, api.load(settings, NAME))  # over plaintext, so backfill gets to Kafka
    env = client_credentials(managed_kafka, oidc, secret="not-the-secret")

    for command in ("consume", "backfill", "tail"):
        # The default retry deadline (300 s) stays: the refusal must end it.
        result = run_cli(command, NAME, settings=settings, env=env, timeout=60)

        assert result.returncode == 1, result.stderr
        assert cli_errors(result) == [
            f"cdc-migrator: no OAUTHBEARER token for Kafka: the token endpoint {oidc.url}/token "
            f"refused client '{CLIENT_ID}' (HTTP 401: invalid_client): check "
            "--kafka-sasl-oauth-client-id and --kafka-sasl-oauth-client-secret"], result.stderr
        assert "Traceback" not in result.stderr and "not-the-secret" not in result.stderr
        assert "retrying with backoff" not in result.stderr


def test_a_token_the_broker_refuses_is_one_line_and_exit_1(db, settings, managed_kafka, oidc,
                                                           tmp_path):
    from cryptography.hazmat.primitives.asymmetric import rsa

    seed_users(db, 10)
    arm(settings, api.load(settings, NAME))
    forged = oidc.mint(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    env = token_command(managed_kafka, forged, tmp_path)

    for command in ("consume", "status"):
        result = run_cli(command, *([NAME] if command != "status" else []), settings=settings,
                         env=env, timeout=60)

        assert result.returncode == 1, result.stderr
        (line,) = cli_errors(result)
        assert line.startswith("cdc-migrator: Kafka refused the OAUTHBEARER token ("), line
        assert line.endswith("): check the token's issuer, audience, signature and expiry "
                             "(--kafka-sasl-oauth-*)"), line
        assert "retrying with backoff" not in result.stderr


@pytest.fixture
def silent_endpoint():
    """A token endpoint that takes connections and never answers (an identity provider that
    hangs): the URL of a listening socket nobody reads."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/token"
    listener.close()


#: As for a lost MongoDB or Kafka (tests/scenarios/test_reliability.py): a piece gives up at
#: its retry deadline; 3 s for the process's own work on a busy machine.
DEADLINE_TOLERANCE = 3.0


@pytest.mark.parametrize("command", ["tail", "consume"])
def test_a_token_endpoint_that_never_answers_is_given_up_at_the_retry_deadline(
        db, settings, managed_kafka, silent_endpoint, command):
    """The token endpoint is asked within a Kafka connection attempt: one that hangs held each
    attempt for the endpoint's own timeout (30 s), past a shorter retry deadline."""
    seed_users(db, 10)
    env = oauthbearer(managed_kafka, token_url=silent_endpoint, client_id=CLIENT_ID,
                      client_secret=CLIENT_SECRET)

    result = run_cli(command, NAME, "--retry-deadline", "5s", "--log-format", "json",
                     settings=settings, env=env, timeout=120)

    records = [json.loads(line) for line in result.stderr.splitlines()]
    took = (dt.datetime.fromisoformat(records[-1]["ts"])
            - dt.datetime.fromisoformat(records[0]["ts"])).total_seconds()
    assert result.returncode == 1, result.stderr[-2000:]
    assert records[-1]["message"].startswith("Kafka at "), records[-1]
    assert 5 <= took <= 5 + DEADLINE_TOLERANCE, (took, records[-1]["message"])


def test_a_token_command_that_fails_is_one_line_and_exit_1(db, settings, managed_kafka,
                                                           tmp_path):
    seed_users(db, 10)
    env = oauthbearer(managed_kafka, token_command=f"{sys.executable} -c \"import sys; "
                      "sys.exit('vault: permission denied')\"")

    result = run_cli("tail", NAME, settings=settings, env=env, timeout=60)

    assert result.returncode == 1, result.stderr
    assert cli_errors(result) == [
        f"cdc-migrator: no OAUTHBEARER token for Kafka: the token command '{sys.executable}' "
        "exited 1 (vault: permission denied): check --kafka-sasl-oauth-token-command"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_kept_until_shortly_before_it_expires():
    clock, fetched = Clock(), []

    def fetch() -> tuple[str, float | None]:
        fetched.append(clock.now)
        return f"token-{len(fetched)}", 600.0

    provider = tokens.CachedToken(fetch, {"logicalCluster": "lkc-1"}, clock=clock)

    seen = [provider.token()]
    clock.now += 600 - tokens.RENEW_BEFORE - 1
    seen.append(provider.token())
    clock.now += 1
    seen.append(provider.token())

    assert seen == ["token-1", "token-1", "token-2"]
    assert provider.extensions() == {"logicalCluster": "lkc-1"}


def test_a_token_without_a_lifetime_is_kept_by_its_jwt_expiry():
    clock = Clock()
    start = clock.now
    claims = b64url(json.dumps({"sub": "x", "exp": int(start) + 100}).encode())
    jwt = f"e30.{claims}.c2ln"
    fetches: list[float] = []
    provider = tokens.CachedToken(lambda: fetches.append(clock.now) or (jwt, None), clock=clock)

    provider.token()
    clock.now = start + 79  # renewed a fifth of a short lifetime before its end
    provider.token()
    clock.now = start + 80
    provider.token()

    assert tokens.jwt_expiry(jwt) == start + 100
    assert fetches == [start, start + 80]


@pytest.mark.parametrize(("values", "message"), [
    ({}, "--kafka-sasl-mechanism OAUTHBEARER needs --kafka-sasl-oauth-token-url (with a "
         "client id and secret) or --kafka-sasl-oauth-token-command"),
    ({"kafka_sasl_oauth_token_url": "https://idp/token"},
     "--kafka-sasl-oauth-token-url needs --kafka-sasl-oauth-client-id and "
     "--kafka-sasl-oauth-client-secret"),
    ({"kafka_sasl_oauth_token_url": "https://idp/token", "kafka_sasl_oauth_token_command": "x"},
     "give --kafka-sasl-oauth-token-url or --kafka-sasl-oauth-token-command, not both"),
])
def test_oauthbearer_settings_missing_or_contradictory_are_a_usage_error(values, message):
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="oauthbearer",
                        **values)

    with pytest.raises(UsageError) as raised:
        _ = settings.kafka_client_options

    assert str(raised.value) == message


@pytest.mark.parametrize(("name", "value", "allowed"), [
    ("kafka_sasl_oauth_extensions", "logicalCluster", "KEY=VALUE[,KEY=VALUE...]"),
    ("kafka_sasl_oauth_token_url", "idp/token", "the http:// or https:// URL of an OIDC token "
                                                "endpoint"),
    ("kafka_sasl_oauth_token_command", "print-token 'unclosed", "a command line: at least one "
                                                                "word, its quotes closed"),
    ("kafka_sasl_oauth_token_command", "  ", "a command line: at least one word, its quotes "
                                             "closed"),
])
def test_an_oauthbearer_setting_of_the_wrong_form_is_refused_by_the_settings_table(
        name, value, allowed):
    """Checked with every other setting, before any token is asked for: a command of no words
    would fail only on the first connection (an IndexError in the token provider)."""
    with pytest.raises(UsageError) as raised:
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="OAUTHBEARER",
                 **{name: value})

    assert str(raised.value) == f"invalid value {value!r} for setting {name}: expected {allowed}"


def test_every_kafka_client_of_a_process_shares_one_token_provider():
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="OAUTHBEARER",
                        kafka_sasl_oauth_token_command="print-token",
                        kafka_sasl_oauth_extensions="logicalCluster=lkc-1, identityPoolId=pool-2")

    first, second = settings.kafka_client_options, settings.kafka_client_options

    assert first["sasl_oauth_token_provider"] is second["sasl_oauth_token_provider"]
    assert first["sasl_oauth_token_provider"].extensions() == {
        "logicalCluster": "lkc-1", "identityPoolId": "pool-2"}


def test_the_client_secret_is_masked_in_config_show():
    shown = run_cli("config", "show", "--json",
                    env={"CDC_MIGRATOR_KAFKA_SASL_OAUTH_CLIENT_SECRET": CLIENT_SECRET})

    assert json.loads(shown.stdout)["kafka_sasl_oauth_client_secret"] == {
        "value": "***", "source": "env"}
    assert CLIENT_SECRET not in shown.stdout + shown.stderr


# A cap on the record size (RecordSizeCap), as managed services have.

def max_message_bytes(broker: PrivateKafka, topic: str) -> tuple[str, str]:
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15_000)
    try:
        entry = client.describe_configs([ConfigResource("TOPIC", topic, ["max.message.bytes"])],
                                        config_filter="all")
    finally:
        client.close()
    found = entry["topic"][topic]["max.message.bytes"]
    return found["value"], found["config_source"]


def seed_with_large(db, large: int) -> None:
    """300 users, one of them ``large`` bytes (it cannot travel whole on the topic)."""
    seed_users(db)
    db.users.update_one({"_id": 7}, {"$set": {"bio": "x" * large}})


def test_under_a_cap_the_topics_get_the_clusters_default_and_large_documents_go_by_key(
        db, settings, managed_kafka):
    seed_with_large(db, 700 << 10)

    ran = run_cli("run", NAME, "--timeout", "90s", "-q", settings=settings)

    assert ran.returncode == 0, ran.stderr
    topic = settings.topic("users")
    assert max_message_bytes(managed_kafka, topic) == (str(BROKER_DEFAULT),
                                                       "STATIC_BROKER_CONFIG")
    refused = [line for line in ran.stderr.splitlines()
               if f"Kafka refused max.message.bytes=17825792 for topic {topic} (" in line]
    assert len(refused) == 1 and "creating it with the cluster's default" in refused[0], \
        ran.stderr
    assert "exceeded max limit of 1048576" in refused[0]
    assert [line for line in ran.stderr.splitlines() if "max.message.bytes=17825792" in line
            and "Kafka refused" not in line] == [], "no fix the cluster would refuse"
    assert db.users.count_documents({"role": "user"}) == 300
    assert db.users.find_one({"_id": 7})["role"] == "user"


def test_a_record_limit_within_the_cap_is_what_the_topics_get(db, settings, managed_kafka):
    seed_with_large(db, 1_500_000)

    ran = run_cli("run", NAME, "--timeout", "90s", "-q", "--max-record-bytes", str(CAP),
                  settings=settings)

    assert ran.returncode == 0, ran.stderr
    for topic in (settings.topic("users"), settings.dlq_topic("users")):
        assert max_message_bytes(managed_kafka, topic) == (str(CAP), "DYNAMIC_TOPIC_CONFIG")
    assert "refused" not in ran.stderr
    assert db.users.count_documents({"role": "user"}) == 300


def test_a_record_limit_above_the_cap_is_one_line_and_creates_nothing(db, settings,
                                                                      managed_kafka):
    seed_users(db)

    result = run_cli("tail", NAME, "--max-record-bytes", str(4 * CAP), settings=settings,
                     timeout=60)

    assert result.returncode == 1, result.stderr
    assert cli_errors(result) == [
        f"cdc-migrator: Kafka refused to create topic {settings.topic('users')} "
        f"(max.message.bytes={4 * CAP}, the cluster's default replication factor): "
        f"PolicyViolationError: Config property 'max.message.bytes' with value '{4 * CAP}' "
        f"exceeded max limit of {CAP}. Check --topic-replication-factor, "
        "--topic-min-insync-replicas and --max-record-bytes"], result.stderr


def test_preflight_asks_a_capped_cluster_whether_it_would_create_the_topic(db, settings,
                                                                          managed_kafka):
    seed_users(db)
    topic = settings.topic("users")

    under = run_cli("preflight", NAME, "--skip-check", "runway", settings=settings)
    above = run_cli("preflight", NAME, "--skip-check", "runway", "--max-record-bytes",
                    str(4 * CAP), settings=settings)

    assert under.returncode == 0, under.stdout + under.stderr  # the cluster's default, warned
    assert f"topic {topic} may be created" in under.stdout
    assert "Kafka caps max.message.bytes" in under.stderr
    assert above.returncode == 1, above.stdout + above.stderr
    assert f"Kafka would refuse to create topic {topic}: Config property 'max.message.bytes' " \
           f"with value '{4 * CAP}' exceeded max limit of {CAP}" in above.stdout
    client = topics.admin(settings)
    try:
        assert topic not in client.list_topics()  # validated only: nothing created
    finally:
        client.close()


# AWS_MSK_IAM: no MSK here. What can be tried: the mechanism is accepted with the msk extra
# (botocore) and reaches a broker's SASL handshake; without the extra it is refused at once.

def msk_env() -> dict[str, str]:
    return {"CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS": KAFKA_SASL_SSL,
            "CDC_MIGRATOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "CDC_MIGRATOR_KAFKA_SSL_CAFILE": str(KAFKA_CA),
            "CDC_MIGRATOR_KAFKA_SASL_MECHANISM": "AWS_MSK_IAM",
            "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-real-key",
            "AWS_DEFAULT_REGION": "eu-west-1"}


def test_aws_msk_iam_reaches_the_brokers_sasl_handshake_with_the_msk_extra(
        db, settings, tls_listeners):
    pytest.importorskip("botocore")
    seed_users(db, 10)
    arm(settings, api.load(settings, NAME))  # over plaintext, so consume gets to Kafka

    result = run_cli("consume", NAME, settings=settings, env=msk_env(), timeout=60)

    # The local broker is not MSK: it offers SCRAM only, and says so.
    assert result.returncode == 1, result.stderr
    (line,) = cli_errors(result)
    assert line == ("cdc-migrator: the Kafka broker does not offer that SASL mechanism "
                    "(UnsupportedSaslMechanismError): check --kafka-sasl-mechanism and the port "
                    "of --kafka"), line
    assert "not-a-real-key" not in result.stderr


@pytest.mark.local_server("the local broker's certificate, .services/tls/ca.pem")
def test_aws_msk_iam_without_the_msk_extra_is_refused_naming_it():
    without_botocore = ("import sys\n"
                        "sys.modules['botocore'] = None  # as if not installed\n"
                        "from cdc_migrator.cli import main\n"
                        "main(['status'])\n")
    result = subprocess.run([sys.executable, "-c", without_botocore], capture_output=True,
                            text=True, cwd=ROOT, timeout=60, env=cli_env(env=msk_env()))

    assert result.returncode == 2, result.stderr
    assert cli_errors(result) == [
        "cdc-migrator: --kafka-sasl-mechanism AWS_MSK_IAM needs the msk extra: pip install "
        "'cdc-migrator[msk]'"]


def test_aws_msk_iam_needs_sasl_ssl():
    settings = Settings(kafka_security_protocol="SASL_PLAINTEXT",
                        kafka_sasl_mechanism="AWS_MSK_IAM")

    with pytest.raises(UsageError) as raised:
        _ = settings.kafka_client_options

    assert str(raised.value) == ("--kafka-sasl-mechanism AWS_MSK_IAM needs "
                                 "--kafka-security-protocol SASL_SSL")
