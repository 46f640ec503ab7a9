"""Every setting of the tool, declared once, and the connections made from them.

:class:`Settings` is the table: each of its fields is a setting, and its
:class:`~cdc_migrator.base.checks.Setting` metadata says how a user gives it (flag,
environment variable, key of the configuration file), what it means, what values it takes and
which commands take it. The command line's options (``cli.py``), the keys of the configuration
file (``configfile.py``), ``config show`` and :meth:`Settings.environment` are all derived from
it: adding a setting is adding one field here.

Precedence, highest first: flag, environment variable, configuration file, default.

Every value is checked by its setting, wherever it comes from (``base/checks.py``), before any
work starts: the command line's and the file's as they are read, a Python caller's when the
Settings are made.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import shlex
import shutil
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pymongo
from pymongo.database import Database
from pymongo.errors import ConfigurationError, InvalidURI

from ..errors import UsageError
from . import codec, naming, tokens
from .checks import A_YEAR, Setting, Source
from .masking import is_secret_option, mask_secrets, mask_uri, uri_secrets

if TYPE_CHECKING:
    from ..core.state import StateStore

DEFAULT_MONGODB_URI = "mongodb://127.0.0.1:27017/app?directConnection=true"
DEFAULT_KAFKA = "127.0.0.1:9092"
_PLAIN_NAME = "1 to 200 printable characters"
_SCOPE = "1 to 1,000 printable characters"
_DATABASE_NAME = ("a database name: 1 to 63 bytes, no control characters, spaces, "
                  "/ \\ . \" or $")
#: Kafka keeps a replica count in 16 bits and a size in bytes in a signed 32-bit integer.
KAFKA_MAX_REPLICAS = 32_767
KAFKA_MAX_INT = 2**31 - 1


def _name(what: str, forbidden: str = "", *, most_bytes: int) -> Callable[[str], str | None]:
    """A rule for a name: ``what`` describes it; not empty, no control character, none of the
    characters ``forbidden``, at most ``most_bytes`` bytes of UTF-8."""
    def rule(value: str) -> str | None:
        if not value or len(value.encode("utf-8", "surrogatepass")) > most_bytes \
                or any(c in forbidden or not c.isprintable() for c in value):
            return what
        return None
    return rule


def _collection_name(value: str) -> str | None:
    if _name("", "$", most_bytes=120)(value) is not None or \
            value.startswith((".", "system.")) or value.endswith("."):
        return ("a collection name: 1 to 120 bytes, no $ and no control characters, not "
                "starting with . or system. nor ending with .")
    return None


def _kafka_name(value: str) -> str | None:
    # Kafka's legal characters for a topic; the topic adds ".DB.COLLECTION" to the prefix.
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,150}", value, re.ASCII):
        return "1 to 150 of the characters Kafka allows in a topic name: A-Z a-z 0-9 . _ -"
    return None


def _bootstrap_servers(value: str) -> str | None:
    entries = value.split(",")
    for entry in entries:
        host, colon, port = entry.strip().rpartition(":") if ":" in entry \
            else (entry.strip(), "", "")
        if not host or any(c.isspace() or not c.isprintable() for c in host) or \
                (colon and not (port.isdigit() and port.isascii() and 0 < int(port) < 65536)):
            return "HOST:PORT[,HOST:PORT...], each port from 1 to 65535"
    return None


def _token_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or \
            any(c.isspace() or not c.isprintable() for c in value):
        return "the http:// or https:// URL of an OIDC token endpoint"
    return None


def _token_command(value: str) -> str | None:
    try:
        words = shlex.split(value)
    except ValueError:  # a quote left open
        words = []
    if not words:
        return "a command line: at least one word, its quotes closed"
    return None


def _extensions(value: str) -> str | None:
    try:
        tokens.parse_extensions(value)
    except ValueError:
        return "KEY=VALUE[,KEY=VALUE...]"
    return None


def _connection_string(value: str) -> str | None:
    if not value.startswith(("mongodb://", "mongodb+srv://")):
        return "a MongoDB connection string: mongodb://... or mongodb+srv://..."
    return None


def _hook_command(value: str) -> str | None:
    try:
        words = shlex.split(value)
    except ValueError:  # a quote left open
        return "a command line, its quotes closed, whose first word is an executable"
    if words and shutil.which(words[0]) is None:
        return f"a command line whose first word is an executable found on the PATH " \
               f"({words[0]!r} is not)"
    return None


def _hook_url(value: str) -> str | None:
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if value and (parts is None or parts.scheme not in ("http", "https") or not parts.netloc
                  or any(c.isspace() or not c.isprintable() for c in value)):
        return "an http:// or https:// URL"
    return None


def _hook_events(value: str) -> str | None:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in (*_HOOK_EVENTS, "before_cutover")]
    if unknown:
        return f"events separated by commas, of: {', '.join(_HOOK_EVENTS)}, before_cutover " \
               f"({unknown[0]!r} is none)"
    return None


def setting(default: Any, help: str, **how: Any) -> Any:
    """A field of :class:`Settings` with its :class:`Setting` (the ``how`` keywords)."""
    return field(default=default, metadata={"setting": Setting(help=help, **how)})


_KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# The commands that run for long and watch their migrations: they serve /metrics and announce
# phase changes; cutover announces its own.
_SERVING = ("tail", "consume", "backfill", "run", "revert", "next", "config show")
_HOOKED = (*_SERVING[:-1], "cutover", "config show")
# The phase changes announced by default (operations/hooks.py's EVENTS).
_HOOK_EVENTS = ("armed", "backfill_done", "ready_for_cutover", "cut_over", "failed",
                "reverted", "dead_letters")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "AWS_MSK_IAM")


@dataclass
class Settings:
    """Where the services are, how the tool names what it creates, and how it behaves.

    Each field is one setting (see the module's docstring); ``kafka_options`` and
    ``mongo_options`` are the client options of the configuration file's ``[kafka]`` and
    ``[mongo]`` tables.
    """

    mongodb_uri: str = setting(
        DEFAULT_MONGODB_URI, "MongoDB connection string; its path names the database.",
        old_env=("MONGODB_URI",), metavar="URI", rule=_connection_string)
    database: str | None = setting(
        None, "Database, overriding the URI's path.", flag="--db", env="CDC_MIGRATOR_DB",
        key="db", metavar="NAME", rule=_name(_DATABASE_NAME, '/\\. "$', most_bytes=63))
    kafka_bootstrap_servers: str = setting(
        DEFAULT_KAFKA, "Kafka bootstrap servers.", flag="--kafka",
        old_env=("KAFKA_BOOTSTRAP_SERVERS",), metavar="HOST:PORT[,...]",
        rule=_bootstrap_servers)
    transforms: Path = setting(
        Path("transforms"), "Directory of migration files.", metavar="DIR", path="dir")
    state_collection: str = setting(
        naming.STATE_COLLECTION, "Collection holding the state of each migration.",
        metavar="NAME", rule=_collection_name)
    topic_prefix: str = setting(
        naming.TOPIC_PREFIX, "Topics are named PREFIX.DB.COLLECTION.", metavar="PREFIX",
        rule=_kafka_name)
    group_prefix: str = setting(
        naming.GROUP_PREFIX, "Consumer groups are named PREFIX.DB.MIGRATION.",
        old_flags=("--group",), old_env=("CDC_MIGRATOR_GROUP",), old_keys=("group",),
        metavar="PREFIX", rule=_name(_PLAIN_NAME, most_bytes=200))
    partitions: int = setting(6, "Partitions of a topic the tool creates.", metavar="N",
                              minimum=1, maximum=10_000)
    topic_replication_factor: int | None = setting(
        None, "Replication factor of the topics the tool creates (at most the number of "
        "brokers). Default: the cluster's default.replication.factor.", metavar="N", minimum=1,
        maximum=KAFKA_MAX_REPLICAS)
    topic_min_insync_replicas: int | None = setting(
        None, "min.insync.replicas of the topics the tool creates: the replicas that must hold "
        "a record before Kafka acknowledges it (the tool produces with acks=all); at most the "
        "replication factor. Default: the cluster's.", metavar="N", minimum=1,
        maximum=KAFKA_MAX_REPLICAS)
    max_record_bytes: int | None = setting(
        None, "The largest record the tool writes, and the max.message.bytes of the topics it "
        "creates. Default: 17825792, a 16 MiB document in its envelope (a cluster that refuses "
        "that much gets its own default, with a warning). Set the cluster's limit where it is "
        "lower (e.g. 8388608); larger documents travel by key only.", metavar="BYTES",
        minimum=65536, maximum=KAFKA_MAX_INT)
    retry_deadline: float = setting(
        300.0, "tail, backfill, consume and run retry a lost MongoDB or Kafka with backoff; "
        "they give up (exit 1) when an outage lasts longer.", metavar="DURATION", unit="s",
        minimum=0, maximum=A_YEAR)
    mongo_timeout_ms: int = setting(
        10_000, "How long one MongoDB operation waits for a usable server "
        "(serverSelectionTimeoutMS).", metavar="MS", unit="ms", minimum=1,
        maximum=86_400_000)
    kafka_security_protocol: str | None = setting(
        None, "How to talk to Kafka (default PLAINTEXT).", choices=_KAFKA_PROTOCOLS,
        kafka="security_protocol")
    kafka_sasl_mechanism: str | None = setting(
        None, "SASL mechanism (with SASL_PLAINTEXT or SASL_SSL). OAUTHBEARER takes its tokens "
        "from the --kafka-sasl-oauth-* settings; AWS_MSK_IAM (SASL_SSL) signs with the AWS "
        "credentials of the environment and needs the msk extra (cdc-migrator[msk]).",
        choices=_SASL_MECHANISMS,
        kafka="sasl_mechanism")
    kafka_sasl_username: str | None = setting(
        None, "SASL user name.", metavar="USER", kafka="sasl_plain_username",
        rule=_name(_PLAIN_NAME, most_bytes=200))
    kafka_sasl_password: str | None = setting(
        None, "SASL password; masked in every output. Prefer the variable: a flag is visible "
        "in the process list.", metavar="PW", secret=True, kafka="sasl_plain_password")
    kafka_sasl_oauth_token_url: str | None = setting(
        None, "OAUTHBEARER: the OIDC token endpoint; tokens by the client credentials grant, "
        "kept until shortly before they expire.", metavar="URL", rule=_token_url)
    kafka_sasl_oauth_client_id: str | None = setting(
        None, "OAUTHBEARER: the client id at the token endpoint.", metavar="ID",
        rule=_name(_PLAIN_NAME, most_bytes=200))
    kafka_sasl_oauth_client_secret: str | None = setting(
        None, "OAUTHBEARER: the client secret; masked in every output. Prefer the variable: a "
        "flag is visible in the process list.", metavar="SECRET", secret=True)
    kafka_sasl_oauth_scope: str | None = setting(
        None, "OAUTHBEARER: the scope to ask the token endpoint for.", metavar="SCOPE",
        rule=_name(_SCOPE, most_bytes=1000))
    kafka_sasl_oauth_token_command: str | None = setting(
        None, "OAUTHBEARER: a command that prints a token, instead of a token endpoint; run "
        "again shortly before the token (a JWT) expires.", metavar="COMMAND",
        rule=_token_command)
    kafka_sasl_oauth_extensions: str | None = setting(
        None, "OAUTHBEARER: SASL extensions sent with the token (Confluent Cloud: "
        "logicalCluster=lkc-...,identityPoolId=pool-...).", metavar="KEY=VALUE,...",
        rule=_extensions)
    kafka_ssl_cafile: str | None = setting(
        None, "CA certificates (PEM) to verify the brokers.", metavar="FILE", path="existing",
        kafka="ssl_cafile")
    kafka_ssl_certfile: str | None = setting(
        None, "Client certificate (PEM), for mutual TLS.", metavar="FILE", path="existing",
        kafka="ssl_certfile")
    kafka_ssl_keyfile: str | None = setting(
        None, "Client private key (PEM).", metavar="FILE", path="existing",
        kafka="ssl_keyfile")
    kafka_ssl_password: str | None = setting(
        None, "Password of the client private key; masked in every output.", metavar="PW",
        secret=True, kafka="ssl_password")
    mongo_tls_ca_file: str | None = setting(
        None, "CA certificates (PEM) to verify MongoDB; turns TLS on.", metavar="FILE",
        path="existing", mongo="tlsCAFile")
    mongo_tls_cert_key_file: str | None = setting(
        None, "Client certificate and key (PEM), for mutual TLS; turns TLS on.",
        metavar="FILE", path="existing", mongo="tlsCertificateKeyFile")
    mongo_tls_insecure: bool | None = setting(
        None, "TLS without verifying the server's certificate or host name (tests only).",
        mongo="tlsInsecure")
    log_format: str = setting(
        "text", "Log lines on stderr as plain text or one JSON object per line.",
        choices=("text", "json"))
    metrics_port: int | None = setting(
        None, "Serve /metrics (Prometheus), /healthz and /readyz over HTTP on PORT; 0 picks a "
        "free port (logged). Default: no server.", metavar="PORT", minimum=0, maximum=65535,
        commands=_SERVING)
    hook_command: str | None = setting(
        None, "A command told of each phase change of --hook-events, the event as JSON on its "
        "stdin (split as a shell would split it, not run by one). It may refuse a cutover "
        "(before_cutover, exit non-zero); otherwise its failures are logged, and the "
        "migration goes on.", metavar="COMMAND", rule=_hook_command, commands=_HOOKED)
    hook_url: str | None = setting(
        None, "A webhook POSTed each phase change of --hook-events as JSON. It may refuse a "
        "cutover (before_cutover, an answer other than 2xx); otherwise its failures are "
        "logged, and the migration goes on. Masked in every output (a webhook's URL often "
        "holds its token).", metavar="URL", secret=True, rule=_hook_url, commands=_HOOKED)
    hook_events: str = setting(
        ",".join(_HOOK_EVENTS), "The events the hooks are told of: armed, backfill_done, "
        "ready_for_cutover, cut_over, failed, reverted, dead_letters; add before_cutover to let "
        "them refuse a cutover.", metavar="EVENT,...", rule=_hook_events, commands=_HOOKED)
    hook_timeout: float = setting(
        30.0, "How long a hook may take; one that takes longer is killed (and refuses the "
        "cutover, for before_cutover).", metavar="DURATION", unit="s", minimum=0.1,
        maximum=86_400,
        commands=_HOOKED)
    on_history_lost: str = setting(
        "fail", "When the server no longer has the change history to resume from: stop with "
        "exit 1 (fail), or capture again from now and backfill the whole collection again "
        "(rebackfill; safe, applying is idempotent; logged and shown by `status`).",
        choices=("fail", "rebackfill"), commands=("tail", "run", "revert", "config show"))
    instance_id: str | None = setting(
        None, "A stable name for this process, unique in the group (e.g. the pod name of a "
        "StatefulSet): restarted under it after a crash, it takes its partitions back at once "
        "instead of after the group's 30 s session timeout (static membership).",
        metavar="NAME", key=None, commands=("consume", "config show"),
        rule=_name(_PLAIN_NAME, most_bytes=200))
    backfill_ranges: int = setting(
        32, "A backfill splits the collection into at most N _id ranges (at least 1,000 "
        "documents each), which its workers and processes share.", metavar="N", minimum=1,
        maximum=100_000, commands=("backfill", "run", "accept", "config show"))
    lease_seconds: float = setting(
        30.0, "A backfill worker holds its range for this long past its last renewal; a "
        "worker killed or cut off loses the range to another worker after it.",
        metavar="SECONDS", unit="s", minimum=0.5, maximum=86_400,
        commands=("backfill", "run", "accept", "config show"))
    max_replication_lag: float | None = setting(
        None, "Hold the backfill and the consumers while a secondary is more than DURATION "
        "behind the primary (replSetGetStatus; delayed, hidden, arbiter and non-voting members "
        "do not count; through mongos, each shard's). Default: not checked.",
        metavar="DURATION", unit="s", minimum=0, maximum=A_YEAR,
        commands=("backfill", "consume", "run", "accept", "preflight", "config show"))
    on_lag_unknown: str = setting(
        "fail", "With --max-replication-lag, when the lag cannot be read (replSetGetStatus "
        "refused: no clusterMonitor role, a managed tier, a shard out of reach): refuse to "
        "start, naming what to grant (fail), or run without the bound, `status` showing the "
        "lag as unknown and why (run).", choices=("fail", "run"),
        commands=("backfill", "consume", "run", "accept", "preflight", "config show"))
    max_write_latency: float | None = setting(
        None, "Hold the backfill and the consumers for a while when a bulk write of the "
        "migration took longer than DURATION. Default: not checked.", metavar="DURATION",
        unit="ms", minimum=0, maximum=1000 * A_YEAR,
        commands=("backfill", "consume", "run", "accept", "config show"))
    kafka_options: dict[str, Any] = field(default_factory=dict)
    mongo_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def table(cls) -> dict[str, Setting]:
        """Every setting by field name, in declaration order, with its name, type and
        default filled in."""
        return _table(cls)

    def __post_init__(self) -> None:
        # A Python caller's values are checked as the command line's are.
        for name, spec in self.table().items():
            setattr(self, name, spec.check(getattr(self, name), Source("python", name)))

    @classmethod
    def from_values(cls, values: Mapping[str, Any],
                    sources: Mapping[str, Source] | None = None, **extra: Any) -> Settings:
        """Settings from a mapping that may hold more than settings (a command's parameters):
        the names of the table are taken, each checked as coming from its source in
        ``sources`` (a Python caller's, for names not there); the rest is left alone."""
        table = cls.table()
        sources = sources or {}
        checked = {name: spec.check(values[name], sources.get(name) or Source("python", name))
                   for name, spec in table.items() if name in values}
        return cls(**checked, **extra)

    @cached_property
    def parsed_uri(self) -> dict[str, Any]:
        """The URI as pymongo parses it; an invalid URI or option is a UsageError.

        pymongo only warns about an invalid option (``directConnection=maybe``) and ignores
        it; here it is refused, as is an option pymongo does not know (often a typo).
        """
        try:
            return pymongo.uri_parser.parse_uri(self.mongodb_uri, warn=False)
        except (InvalidURI, ConfigurationError, ValueError) as exc:
            raise UsageError(
                f"the MongoDB URI {mask_uri(self.mongodb_uri)!r} is not a valid MongoDB URI: "
                f"{mask_secrets(str(exc), *uri_secrets(self.mongodb_uri))}"
            ) from None

    @cached_property
    def database_name(self) -> str:
        parsed = self.parsed_uri  # validated even when --db names the database
        if self.database:
            return self.database
        if not parsed.get("database"):
            raise UsageError(
                "the MongoDB URI names no database: put it in the path "
                "(mongodb://host:27017/DBNAME) or pass --db"
            )
        return str(parsed["database"])

    @property
    def kafka_client_options(self) -> dict[str, Any]:
        """The options every Kafka client gets beyond the bootstrap servers: the file's
        ``[kafka]`` table, overridden by the TLS/SASL settings that are set."""
        options = dict(self.kafka_options)
        for name, spec in self.table().items():
            value = getattr(self, name)
            if spec.kafka and value is not None:
                options[spec.kafka] = value.upper() if spec.choices else value
        mechanism = str(options.get("sasl_mechanism") or "").upper()
        if mechanism == "OAUTHBEARER":
            options["sasl_oauth_token_provider"] = self.token_provider
        elif mechanism == "AWS_MSK_IAM":
            _check_msk(options)
        return options

    def check_kafka_client(self) -> None:
        """A UsageError when the SASL mechanism lacks what it needs (the OAUTHBEARER
        settings, the msk extra): before any work, not on the first connection."""
        _ = self.kafka_client_options

    @cached_property
    def token_provider(self) -> tokens.CachedToken:
        """The OAUTHBEARER token provider every Kafka client of this process shares (one
        token, renewed shortly before it expires)."""
        try:
            return tokens.provider(
                self.kafka_sasl_oauth_token_url, self.kafka_sasl_oauth_client_id,
                self.kafka_sasl_oauth_client_secret, self.kafka_sasl_oauth_scope,
                self.kafka_sasl_oauth_token_command, self.kafka_sasl_oauth_extensions,
                timeout=self.token_request_seconds)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    @property
    def mongo_client_options(self) -> dict[str, Any]:
        """The file's ``[mongo]`` table, overridden by the TLS settings that are set (any of
        them turns TLS on). MongoClient option names are case-insensitive: a setting replaces
        the file's spelling of the same option."""
        flagged = {spec.mongo: getattr(self, name) for name, spec in self.table().items()
                   if spec.mongo and getattr(self, name)}
        if flagged:
            flagged["tls"] = True
        lowered = {option.lower() for option in flagged}
        return {**{k: v for k, v in self.mongo_options.items() if k.lower() not in lowered},
                **flagged}

    @property
    def server_selection_ms(self) -> int:
        """How long one operation waits for a usable MongoDB server: ``mongo_timeout_ms``, and
        never longer than the retry deadline (at least 1 s), so that a piece riding out an
        outage gives up within one attempt of its deadline (see ``base/retry.py``)."""
        return int(min(self.mongo_timeout_ms, max(1000.0, self.retry_deadline * 1000)))

    @property
    def kafka_bootstrap_ms(self) -> int:
        """How long one Kafka client waits to reach a broker: 10 s, and never longer than the
        retry deadline (at least 1 s); the caller's retries decide how long to keep trying."""
        return int(min(10_000.0, max(1000.0, self.retry_deadline * 1000)))

    @property
    def token_request_seconds(self) -> float:
        """How long one request for an OAUTHBEARER token may take: 30 s, and never longer than
        the retry deadline (at least 1 s). A token is asked for within a Kafka connection
        attempt, which must end within the deadline (see ``base/retry.py``)."""
        return min(tokens.REQUEST_TIMEOUT, max(1.0, self.retry_deadline))

    @cached_property
    def client(self) -> pymongo.MongoClient:
        _ = self.database_name  # validates the URI first, with a clear message
        try:
            return pymongo.MongoClient(
                self.mongodb_uri, serverSelectionTimeoutMS=self.server_selection_ms,
                **{**self.mongo_client_options, **codec.client_options()},
            )
        except (InvalidURI, ConfigurationError, ValueError, TypeError) as exc:
            raise UsageError(
                f"cannot use the MongoDB URI {mask_uri(self.mongodb_uri)!r}: "
                f"{mask_secrets(str(exc), *uri_secrets(self.mongodb_uri))}"
            ) from None

    def client_for(self, hosts: str, replica_set: str | None = None) -> pymongo.MongoClient:
        """A client of other members of the deployment (a shard's, named by ``config.shards``),
        with the credentials and options of ``mongodb_uri``; kept, and closed with the rest."""
        key = (hosts, replica_set)
        if key not in self._members:
            parsed = self.parsed_uri
            options = {k: v for k, v in parsed["options"].items()
                       if k.lower() not in _TOPOLOGY_OPTIONS}
            where = {"replicaSet": replica_set} if replica_set else {"directConnection": True}
            self._members[key] = pymongo.MongoClient(
                hosts.split(","), username=parsed.get("username"),
                password=parsed.get("password"),
                serverSelectionTimeoutMS=min(self.mongo_timeout_ms, MEMBER_TIMEOUT_MS),
                **{**options, **where, **self.mongo_client_options, **codec.client_options()})
        return self._members[key]

    @cached_property
    def _members(self) -> dict[tuple[str, str | None], pymongo.MongoClient]:
        return {}

    @property
    def db(self) -> Database:
        return self.client[self.database_name]

    @property
    def schemas(self) -> Path:
        """The ``schemas/`` directory beside the transforms directory: where a migration's
        ``expand_schema`` and ``contract_schema`` files are."""
        return Path(self.transforms).resolve().parent / "schemas"

    @property
    def store(self) -> StateStore:
        """The state of the migrations (``state_collection`` in the database), read and
        changed through its named operations."""
        # The one door from the settings (the floor) to the core's state store: every actor
        # gets the store here instead of building it from the database and the collection.
        from ..core.state import StateStore

        return StateStore(self.db, self.state_collection)

    def secrets(self) -> list[str]:
        """The values to mask wherever they could appear: secret settings, the URI's
        credentials, and the password-like options of the client tables."""
        found = [str(getattr(self, n)) for n, s in self.table().items()
                 if s.secret and n != "mongodb_uri" and getattr(self, n)]
        found += [str(v) for table in (self.kafka_options, self.mongo_options)
                  for k, v in table.items() if is_secret_option(k) and v]
        return found + uri_secrets(self.mongodb_uri)

    def environment(self) -> dict[str, str]:
        """The environment variables that make a ``cdc-migrator`` command use these settings:
        for running one as a subprocess, the client options included
        (``CDC_MIGRATOR_KAFKA_OPT_CLIENT_ID``, as ``configfile.with_environment`` reads them)."""
        env = {spec.env_name: spec.text(getattr(self, name))
               for name, spec in self.table().items()
               if spec.env_name and getattr(self, name) is not None}
        for prefix, options in (("CDC_MIGRATOR_KAFKA_OPT_", self.kafka_options),
                                ("CDC_MIGRATOR_MONGO_OPT_", self.mongo_options)):
            env.update({prefix + key.upper(): ("true" if value else "false")
                        if isinstance(value, bool) else str(value)
                        for key, value in options.items()})
        return env

    def topic(self, collection: str) -> str:
        """The Kafka topic of one migrated collection."""
        return naming.topic(self.topic_prefix, self.database_name, collection)

    def dlq_topic(self, collection: str) -> str:
        """The dead-letter topic of one migrated collection."""
        return naming.dlq_topic(self.topic_prefix, self.database_name, collection)

    def group(self, migration: str) -> str:
        """The consumer group of one migration."""
        return naming.group(self.group_prefix, self.database_name, migration)

    def close(self) -> None:
        if "client" in self.__dict__:
            self.client.close()
            del self.__dict__["client"]
        for member in self.__dict__.pop("_members", {}).values():
            member.close()


#: Options of the URI that say which servers to talk to, not how: not carried to a shard's.
_TOPOLOGY_OPTIONS = frozenset({"directconnection", "replicaset", "loadbalanced", "srvservicename",
                               "srvmaxhosts", "readpreference", "readpreferencetags"})
#: How long a client of another member waits for it (a shard unreachable from here).
MEMBER_TIMEOUT_MS = 5000


def _check_msk(options: Mapping[str, Any]) -> None:
    """AWS_MSK_IAM needs botocore (the msk extra) and TLS, or it fails only on connecting."""
    try:
        importlib.import_module("botocore")  # kafka-python signs with its credentials
    except ImportError:
        raise UsageError("--kafka-sasl-mechanism AWS_MSK_IAM needs the msk extra: pip install "
                         "'cdc-migrator[msk]'") from None
    if str(options.get("security_protocol") or "").upper() != "SASL_SSL":
        raise UsageError("--kafka-sasl-mechanism AWS_MSK_IAM needs "
                         "--kafka-security-protocol SASL_SSL")


def _table(cls: type[Settings]) -> dict[str, Setting]:
    hints = typing.get_type_hints(cls)
    table = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("setting")
        if spec is None:
            continue
        kinds = [k for k in typing.get_args(hints[f.name]) if k is not type(None)] \
            or [hints[f.name]]
        table[f.name] = dataclasses.replace(spec, name=f.name, kind=kinds[0],
                                            default=f.default)
    return table
