"""Every setting of the tool, declared once, and the connections made from them.

:class:`Settings` is the table: each of its fields is a setting, and its :class:`Setting`
metadata says how a user gives it (flag, environment variable, key of the configuration file),
what it means and what values it takes. The command line's options (``cli.py``), the keys of
the configuration file (``configfile.py``), ``config show`` and :meth:`Settings.environment`
are all derived from it: adding a setting is adding one field here.

Precedence, highest first: flag, environment variable, configuration file, default.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pymongo
from pymongo.database import Database
from pymongo.errors import ConfigurationError, InvalidURI

from ..errors import UsageError
from . import codec, naming, tokens

if TYPE_CHECKING:
    from ..core.state import StateStore

DEFAULT_MONGODB_URI = "mongodb://127.0.0.1:27017/app?directConnection=true"
DEFAULT_KAFKA = "127.0.0.1:9092"


def mask_uri(uri: str) -> str:
    """``uri`` with its credentials replaced by ``***``, safe to print or log.

    Everything between ``://`` and the last ``@`` is hidden, whatever characters the password
    holds: the URIs that leak a password are the malformed ones (an unescaped ``@``, ``/`` or
    ``:`` in it), so nothing here relies on the URI being valid.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or "@" not in rest:
        return uri
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


# A connection string inside free text: up to the last "@" before a host name. A password may
# hold any character, spaces and line breaks included (a malformed URI does not escape them),
# so the credentials end only there: on the same line, or on the next ones while each has an
# "@" of its own. Text after the URI with an "@" of its own is masked too.
_URI_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?:[^\n]|\n(?=[^\n]*@))*@(?=[\w\[])")
# An OAUTHBEARER token as the Kafka client's debug log shows its SASL messages ("auth=Bearer
# eyJ..."): a credential until it expires.
_BEARER = re.compile(r"(?i)\b(Bearer\s+)[\w\-.~+/]+=*")
# Shorter secrets are not registered for masking: they would blank out ordinary words.
MIN_SECRET_LENGTH = 4


def mask_secrets(text: str, *secrets: str | None) -> str:
    """Remove the credentials of connection strings, bearer tokens and the given secrets from
    ``text``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return _BEARER.sub(r"\1***", _URI_CREDENTIALS.sub(r"\1***@", text))


def uri_secrets(uri: str) -> list[str]:
    """The credentials of ``uri`` (all of them, and the password alone), to be masked wherever
    they might appear, e.g. quoted in part by a driver's message about a malformed URI."""
    rest = uri.partition("://")[2]
    if "@" not in rest:
        return []
    userinfo = rest.rpartition("@")[0]
    password = userinfo.partition(":")[2]
    return [s for s in (userinfo, password) if len(s) >= MIN_SECRET_LENGTH]



@dataclass(frozen=True)
class Setting:
    """How a user gives one setting, and what it takes (the metadata of a Settings field).

    ``flag`` defaults to ``--`` and the field's name with dashes, ``env`` to ``CDC_MIGRATOR_``
    and the name in capitals, ``key`` (the configuration file's) to the name; ``env`` or
    ``key`` None means there is none. ``commands`` names the commands that take the setting
    as an option (``"config show"`` for a subcommand); None: every command. ``path`` is
    ``"dir"`` or ``"file"`` (a relative path in the file is relative to the file);
    ``"existing"`` files must exist.
    ``kafka``/``mongo`` name the client option the setting gives (TLS, SASL).
    """

    help: str
    flag: str = ""
    env: str | None = ""
    key: str | None = ""
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    path: Literal["dir", "file", "existing"] | None = None
    secret: bool = False
    commands: tuple[str, ...] | None = None
    kafka: str | None = None
    mongo: str | None = None
    name: str = ""
    kind: type = str
    default: Any = None

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def env_name(self) -> str | None:
        return f"CDC_MIGRATOR_{self.name.upper()}" if self.env == "" else self.env

    @property
    def key_name(self) -> str | None:
        return self.name if self.key == "" else self.key


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
        env="MONGODB_URI", metavar="URI")
    database: str | None = setting(
        None, "Database, overriding the URI's path.", flag="--db", env="CDC_MIGRATOR_DB",
        key="db", metavar="NAME")
    kafka_bootstrap_servers: str = setting(
        DEFAULT_KAFKA, "Kafka bootstrap servers.", flag="--kafka",
        env="KAFKA_BOOTSTRAP_SERVERS", metavar="HOST:PORT[,...]")
    transforms: Path = setting(
        Path("transforms"), "Directory of migration files.", metavar="DIR", path="dir")
    state_collection: str = setting(
        naming.STATE_COLLECTION, "Collection holding the state of each migration.",
        metavar="NAME")
    topic_prefix: str = setting(
        naming.TOPIC_PREFIX, "Topics are named PREFIX.DB.COLLECTION.", metavar="PREFIX")
    group_prefix: str = setting(
        naming.GROUP_PREFIX, "Consumer groups are named PREFIX.DB.MIGRATION.", flag="--group",
        env="CDC_MIGRATOR_GROUP", key="group", metavar="PREFIX")
    partitions: int = setting(6, "Partitions of a topic the tool creates.", metavar="N",
                              minimum=1)
    topic_replication_factor: int | None = setting(
        None, "Replication factor of the topics the tool creates (at most the number of "
        "brokers). Default: the cluster's default.replication.factor.", metavar="N", minimum=1)
    topic_min_insync_replicas: int | None = setting(
        None, "min.insync.replicas of the topics the tool creates: the replicas that must hold "
        "a record before Kafka acknowledges it (the tool produces with acks=all); at most the "
        "replication factor. Default: the cluster's.", metavar="N", minimum=1)
    max_record_bytes: int | None = setting(
        None, "The largest record the tool writes, and the max.message.bytes of the topics it "
        "creates. Default: 17825792, a 16 MiB document in its envelope (a cluster that refuses "
        "that much gets its own default, with a warning). Set the cluster's limit where it is "
        "lower (e.g. 8388608); larger documents travel by key only.", metavar="BYTES",
        minimum=65536)
    retry_deadline: float = setting(
        300.0, "tail, backfill, consume and run retry a lost MongoDB or Kafka with backoff; "
        "they give up (exit 1) when an outage lasts longer.", metavar="SECONDS", minimum=0)
    mongo_timeout_ms: int = setting(
        10_000, "How long one MongoDB operation waits for a usable server "
        "(serverSelectionTimeoutMS).", metavar="MS", minimum=1)
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
        None, "SASL user name.", metavar="USER", kafka="sasl_plain_username")
    kafka_sasl_password: str | None = setting(
        None, "SASL password; masked in every output. Prefer the variable: a flag is visible "
        "in the process list.", metavar="PW", secret=True, kafka="sasl_plain_password")
    kafka_sasl_oauth_token_url: str | None = setting(
        None, "OAUTHBEARER: the OIDC token endpoint; tokens by the client credentials grant, "
        "kept until shortly before they expire.", metavar="URL")
    kafka_sasl_oauth_client_id: str | None = setting(
        None, "OAUTHBEARER: the client id at the token endpoint.", metavar="ID")
    kafka_sasl_oauth_client_secret: str | None = setting(
        None, "OAUTHBEARER: the client secret; masked in every output. Prefer the variable: a "
        "flag is visible in the process list.", metavar="SECRET", secret=True)
    kafka_sasl_oauth_scope: str | None = setting(
        None, "OAUTHBEARER: the scope to ask the token endpoint for.", metavar="SCOPE")
    kafka_sasl_oauth_token_command: str | None = setting(
        None, "OAUTHBEARER: a command that prints a token, instead of a token endpoint; run "
        "again shortly before the token (a JWT) expires.", metavar="COMMAND")
    kafka_sasl_oauth_extensions: str | None = setting(
        None, "OAUTHBEARER: SASL extensions sent with the token (Confluent Cloud: "
        "logicalCluster=lkc-...,identityPoolId=pool-...).", metavar="KEY=VALUE,...")
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
        "migration goes on.", metavar="COMMAND", commands=_HOOKED)
    hook_url: str | None = setting(
        None, "A webhook POSTed each phase change of --hook-events as JSON. It may refuse a "
        "cutover (before_cutover, an answer other than 2xx); otherwise its failures are "
        "logged, and the migration goes on. Masked in every output (a webhook's URL often "
        "holds its token).", metavar="URL", secret=True, commands=_HOOKED)
    hook_events: str = setting(
        ",".join(_HOOK_EVENTS), "The events the hooks are told of: armed, backfill_done, "
        "ready_for_cutover, cut_over, failed, reverted, dead_letters; add before_cutover to let "
        "them refuse a cutover.", metavar="EVENT,...", commands=_HOOKED)
    hook_timeout: float = setting(
        30.0, "How long a hook may take; one that takes longer is killed (and refuses the "
        "cutover, for before_cutover).", metavar="SECONDS", minimum=0.1, commands=_HOOKED)
    on_history_lost: str = setting(
        "fail", "When the server no longer has the change history to resume from: stop with "
        "exit 1 (fail), or capture again from now and backfill the whole collection again "
        "(rebackfill; safe, applying is idempotent; logged and shown by `status`).",
        choices=("fail", "rebackfill"), commands=("tail", "run", "revert", "config show"))
    instance_id: str | None = setting(
        None, "A stable name for this process, unique in the group (e.g. the pod name of a "
        "StatefulSet): restarted under it after a crash, it takes its partitions back at once "
        "instead of after the group's 30 s session timeout (static membership).",
        metavar="NAME", key=None, commands=("consume",))
    backfill_ranges: int = setting(
        32, "A backfill splits the collection into at most N _id ranges (at least 1,000 "
        "documents each), which its workers and processes share.", metavar="N", minimum=1,
        commands=("backfill", "run", "accept", "config show"))
    lease_seconds: float = setting(
        30.0, "A backfill worker holds its range for this long past its last renewal; a "
        "worker killed or cut off loses the range to another worker after it.",
        metavar="SECONDS", minimum=0.5, commands=("backfill", "run", "accept", "config show"))
    max_replication_lag: float | None = setting(
        None, "Hold the backfill and the consumers while a secondary is more than SECONDS "
        "behind the primary (replSetGetStatus; delayed, hidden, arbiter and non-voting members "
        "do not count; through mongos, each shard's). Default: not checked.",
        metavar="SECONDS",
        minimum=0, commands=("backfill", "consume", "run", "accept", "preflight", "config show"))
    on_lag_unknown: str = setting(
        "fail", "With --max-replication-lag, when the lag cannot be read (replSetGetStatus "
        "refused: no clusterMonitor role, a managed tier, a shard out of reach): refuse to "
        "start, naming what to grant (fail), or run without the bound, `status` showing the "
        "lag as unknown and why (run).", choices=("fail", "run"),
        commands=("backfill", "consume", "run", "accept", "preflight", "config show"))
    max_write_latency: float | None = setting(
        None, "Hold the backfill and the consumers for a while when a bulk write of the "
        "migration took longer than MS. Default: not checked.", metavar="MS", minimum=0,
        commands=("backfill", "consume", "run", "accept", "config show"))
    kafka_options: dict[str, Any] = field(default_factory=dict)
    mongo_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def table(cls) -> dict[str, Setting]:
        """Every setting by field name, in declaration order, with its name, type and
        default filled in."""
        return _table(cls)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], **extra: Any) -> Settings:
        """Settings from a mapping that may hold more than settings (a command's parameters):
        the names of the table are taken, the rest is left alone."""
        table = cls.table()
        return cls(**{k: v for k, v in values.items() if k in table}, **extra)

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
                f"MONGODB_URI {mask_uri(self.mongodb_uri)!r} is not a valid MongoDB URI: "
                f"{mask_secrets(str(exc), *uri_secrets(self.mongodb_uri))}"
            ) from None

    @cached_property
    def database_name(self) -> str:
        parsed = self.parsed_uri  # validated even when --db names the database
        if self.database:
            return self.database
        if not parsed.get("database"):
            raise UsageError(
                "MONGODB_URI names no database: put it in the path "
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
                self.kafka_sasl_oauth_token_command, self.kafka_sasl_oauth_extensions)
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

    @cached_property
    def client(self) -> pymongo.MongoClient:
        _ = self.database_name  # validates the URI first, with a clear message
        try:
            return pymongo.MongoClient(
                self.mongodb_uri, serverSelectionTimeoutMS=self.mongo_timeout_ms,
                **{**self.mongo_client_options, **codec.client_options()},
            )
        except (InvalidURI, ConfigurationError, ValueError, TypeError) as exc:
            raise UsageError(
                f"cannot use MONGODB_URI {mask_uri(self.mongodb_uri)!r}: "
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
        for running one as a subprocess. (The client tables of a file have no variables.)"""
        env = {}
        for name, spec in self.table().items():
            value = getattr(self, name)
            if spec.env_name and value is not None:
                env[spec.env_name] = ("1" if value else "") if isinstance(value, bool) \
                    else str(value)
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

_SECRET_WORDS = ("password", "secret", "token")


def is_secret_option(key: str) -> bool:
    """Whether a client option (of the file's ``[kafka]``/``[mongo]`` tables) is a secret."""
    return any(word in key.lower() for word in _SECRET_WORDS)


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
