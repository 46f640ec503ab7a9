"""Every setting of the tool, declared once, and the connections made from them.

:class:`Settings` is the table: each of its fields is a setting, and its :class:`Setting`
metadata says how a user gives it (flag, environment variable, key of the configuration file),
what it means and what values it takes. The command line's options (``cli.py``), the keys of
the configuration file (``configfile.py``), ``config show`` and :meth:`Settings.environment`
are all derived from it: adding a setting is adding one field here.

Precedence, highest first: flag, environment variable, configuration file, default.

Every value is checked here, wherever it comes from (:meth:`Setting.check`): a flag or an
environment variable (text, parsed), the configuration file (TOML values, of the exact kind:
no ``true`` for a number, no list for a number of seconds), ``throttle`` and the state read
back. Numbers are finite and in range, protocols and mechanisms one of their names. A value
refused is one line naming the setting, where it came from and what is allowed
(:class:`SettingError`, exit 2), before any work starts. :data:`OPTIONS` declares the options
of single commands (``--rate``, ``--batch-size``, ...) the same way, checked the same way.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, quote_plus, unquote_plus

import pymongo
from pymongo.database import Database
from pymongo.errors import ConfigurationError, InvalidURI

from ..errors import UsageError
from . import codec, naming

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
# Shorter secrets are not registered for masking: they would blank out ordinary words.
MIN_SECRET_LENGTH = 4
# A secret named by its key, whatever its value: a password, passwd or secret quoted after a
# key holding the word (a dict's repr, JSON), or unquoted after "KEY=" (a query string).
_KEYED_SECRET = re.compile(
    r"""(?i)([\w.-]*(?:password|passwd|secret)[\w.-]*['"]?\s*[:=]\s*)"""
    r"""('(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"|(?<==)[^\s&;,'"]+)""")


def secret_forms(secret: str) -> list[str]:
    """Every form ``secret`` takes in text, longest first: as it is, escaped by ``repr`` (a
    container's repr, an error's) or by JSON (ASCII or not), percent-encoded (a URI, a form),
    the ``repr`` of its UTF-8 bytes, and each escaped form escaped once more (a repr quoted in
    an error, JSON of a repr)."""
    encoded = secret.encode("utf-8", "surrogatepass")
    forms = {secret, repr(secret)[1:-1], repr(encoded)[2:-1], json.dumps(secret)[1:-1],
             json.dumps(secret, ensure_ascii=False)[1:-1], quote(encoded, safe=""),
             quote_plus(encoded, safe=""), quote(encoded)}
    forms |= {escaped for f in list(forms) for escaped in (
        repr(f)[1:-1], json.dumps(f)[1:-1], json.dumps(f, ensure_ascii=False)[1:-1])}
    return sorted((f for f in forms if f), key=len, reverse=True)


def mask_forms(text: str, forms: Iterable[str]) -> str:
    """``text`` with each of ``forms`` (longest first), keyed secrets and the credentials of
    connection strings replaced by ``***``."""
    for form in forms:
        text = text.replace(form, "***")
    text = _KEYED_SECRET.sub(_masked_value, text)
    return _URI_CREDENTIALS.sub(r"\1***@", text)


def _masked_value(match: re.Match[str]) -> str:
    value = match.group(2)
    quote_mark = value[0] if value[0] in "'\"" else ""
    return f"{match.group(1)}{quote_mark}***{quote_mark}"


def mask_secrets(text: str, *secrets: str | None) -> str:
    """Remove the credentials of connection strings, keyed secrets and the given secrets, in
    every form (:func:`secret_forms`), from ``text``."""
    forms = {f for s in secrets if s and len(s) >= MIN_SECRET_LENGTH for f in secret_forms(s)}
    return mask_forms(text, sorted(forms, key=len, reverse=True))


def uri_secrets(uri: str) -> list[str]:
    """The credentials of ``uri`` (all of them, and the password alone, as written and
    decoded), to be masked wherever they might appear, e.g. quoted in part by a driver's
    message about a malformed URI."""
    rest = uri.partition("://")[2]
    if "@" not in rest:
        return []
    userinfo = rest.rpartition("@")[0]
    password = userinfo.partition(":")[2]
    return [s for s in dict.fromkeys((userinfo, password, unquote_plus(password)))
            if len(s) >= MIN_SECRET_LENGTH]


SourceKind = Literal["flag", "env", "file", "default", "throttle", "state", "python"]


@dataclass(frozen=True)
class Source:
    """Where a value came from, as the line refusing it names it: ``name`` is the flag, the
    variable, the file's key or the state's field; ``place`` the file or the migration."""

    kind: SourceKind
    name: str
    place: str = ""

    @property
    def text(self) -> bool:
        """Whether the value is text to parse (a flag, a variable), not a typed value."""
        return self.kind in ("flag", "env", "throttle")

    def __str__(self) -> str:
        return {"flag": f"flag {self.name}", "env": f"environment variable {self.name}",
                "file": f"{self.name} in config file {self.place}",
                "throttle": f"throttle {self.name}",
                "state": f"{self.name} in the state of {self.place}",
                "default": f"the default of {self.name}",
                "python": f"setting {self.name}"}[self.kind]


class SettingError(UsageError):
    """A value a setting does not take: one line naming the setting, where the value came from
    and what is allowed (exit 2)."""


class _NotAllowed(Exception):
    """Raised inside :meth:`Setting.check`; the message, when any, says what is allowed."""


#: The longest time any setting takes, in seconds: beyond it a wait is a mistake, and far
#: beyond it the platform's waits overflow.
A_YEAR = 365 * 86_400
_PLAIN_NAME = "1 to 200 printable characters"
_DATABASE_NAME = ("a database name: 1 to 63 bytes, no control characters, spaces, "
                  "/ \\ . \" or $")
_UNITS = {"SECONDS": "seconds", "MS": "milliseconds", "DOCS/S": "documents per second"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)
_NUMBER = re.compile(r"\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*", re.ASCII)


@dataclass(frozen=True)
class Setting:
    """How a user gives one setting, and what it takes (the metadata of a Settings field).

    ``flag`` defaults to ``--`` and the field's name with dashes, ``env`` to ``CDC_MIGRATOR_``
    and the name in capitals, ``key`` (the configuration file's) to the name; ``env`` or
    ``key`` None means there is none. ``everywhere`` settings are options of every command;
    the others only of the commands that name them. ``path`` is ``"dir"`` or ``"file"`` (a
    relative path in the file is relative to the file); ``"existing"`` files must exist.
    ``kafka``/``mongo`` name the client option the setting gives (TLS, SASL). ``minimum`` and
    ``maximum`` bound a number (inclusive), ``above`` from below (exclusive); ``rule`` checks a
    text further and returns, when it is broken, what is allowed.
    """

    help: str
    flag: str = ""
    env: str | None = ""
    key: str | None = ""
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    rule: Callable[[str], str | None] | None = None
    path: Literal["dir", "file", "existing"] | None = None
    secret: bool = False
    everywhere: bool = True
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

    def check(self, value: Any, source: Source) -> Any:
        """``value`` as this setting takes it, or :class:`SettingError`.

        Text from a flag or a variable is parsed; a typed value (the file's, the state's, a
        Python caller's) must be of exactly the setting's kind. None means "not set", which
        only a setting without a default accepts.
        """
        if value is None and self.default is None:
            return None
        try:
            return self._checked(value, source)
        except _NotAllowed as exc:
            shown = "***" if self.secret else _brief(value)
            raise SettingError(f"invalid value {shown} for {source}: expected "
                               f"{str(exc) or self.allowed()}") from None

    def allowed(self) -> str:
        """What the setting takes, in words (for help texts and refusals)."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is bool:
            return "true or false"
        if self.path == "existing":
            return "the path of an existing file"
        if self.path:
            return "a path"
        if self.kind in (int, float):
            what = "an integer" if self.kind is int else "a finite number"
            unit = _UNITS.get(self.metavar or "")
            return what + (f" of {unit}" if unit else "") + self._range()
        return "text"

    def _range(self) -> str:
        high = f"{_plain(self.maximum)}" if self.maximum is not None else None
        if self.above is not None:
            return f" above {_plain(self.above)}" + (f", at most {high}" if high else "")
        if self.minimum is not None:
            low = _plain(self.minimum)
            return f" from {low} to {high}" if high else f" of at least {low}"
        return f" of at most {high}" if high else ""

    def _checked(self, value: Any, source: Source) -> Any:
        if self.kind is bool:
            return _boolean(value, source)
        if self.kind in (int, float):
            number = _number(value, source, self.kind)
            low, high = self.minimum, self.maximum
            if (low is not None and number < low) or (high is not None and number > high) \
                    or (self.above is not None and number <= self.above):
                raise _NotAllowed
            return number
        if isinstance(value, Path) and self.path and not source.text:
            value = str(value)
        if not isinstance(value, str):
            raise _NotAllowed
        if self.choices:
            return _choice(value, self.choices, exact=self.kafka is None)
        if self.path:
            return _path(value, self.path, self.kind)
        problem = self.rule(value) if self.rule else None
        if problem:
            raise _NotAllowed(problem)
        return value


def _plain(number: float) -> str:
    """A bound as a person writes it: 31,536,000 rather than 3.1536e+07."""
    return f"{int(number):,}" if number == int(number) else f"{number:g}"


def _brief(value: Any) -> str:
    """A value as a refusal shows it: its repr, on one line, at most 60 characters."""
    text = mask_secrets(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _boolean(value: Any, source: Source) -> bool:
    if isinstance(value, bool):
        return value
    if source.text and isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise _NotAllowed


def _number(value: Any, source: Source, kind: type) -> int | float:
    if source.text and isinstance(value, str):
        pattern = _INTEGER if kind is int else _NUMBER
        if not pattern.fullmatch(value):
            raise _NotAllowed
        value = int(value) if kind is int else float(value)
    if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
        raise _NotAllowed  # a TOML true is no 1, a list no number
    if kind is int:
        return int(value)
    try:
        number = float(value)
    except OverflowError:
        raise _NotAllowed from None
    if not math.isfinite(number):
        raise _NotAllowed
    return number


def _choice(value: str, choices: tuple[str, ...], *, exact: bool) -> str:
    for choice in choices:
        if value == choice or (not exact and value.upper() == choice):
            return choice
    raise _NotAllowed


def _path(value: str, how: str, kind: type) -> Any:
    if not value:
        raise _NotAllowed
    try:  # a NUL, or a name longer than the system takes, fails every use of the path
        is_file = Path(value).is_file()
    except (OSError, ValueError):
        raise _NotAllowed from None
    if how == "existing" and not is_file:
        raise _NotAllowed
    return Path(value) if kind is Path else value


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


def _connection_string(value: str) -> str | None:
    if not value.startswith(("mongodb://", "mongodb+srv://")):
        return "a MongoDB connection string: mongodb://... or mongodb+srv://..."
    return None


def setting(default: Any, help: str, **how: Any) -> Any:
    """A field of :class:`Settings` with its :class:`Setting` (the ``how`` keywords)."""
    return field(default=default, metadata={"setting": Setting(help=help, **how)})


_KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass
class Settings:
    """Where the services are, how the tool names what it creates, and how it behaves.

    Each field is one setting (see the module's docstring); ``kafka_options`` and
    ``mongo_options`` are the client options of the configuration file's ``[kafka]`` and
    ``[mongo]`` tables.
    """

    mongodb_uri: str = setting(
        DEFAULT_MONGODB_URI, "MongoDB connection string; its path names the database.",
        env="MONGODB_URI", metavar="URI", rule=_connection_string)
    database: str | None = setting(
        None, "Database, overriding the URI's path.", flag="--db", env="CDC_MIGRATOR_DB",
        key="db", metavar="NAME", rule=_name(_DATABASE_NAME, '/\\. "$', most_bytes=63))
    kafka_bootstrap_servers: str = setting(
        DEFAULT_KAFKA, "Kafka bootstrap servers.", flag="--kafka",
        env="KAFKA_BOOTSTRAP_SERVERS", metavar="HOST:PORT[,...]", rule=_bootstrap_servers)
    transforms: Path = setting(
        Path("transforms"), "Directory of migration files.", metavar="DIR", path="dir")
    state_collection: str = setting(
        naming.STATE_COLLECTION, "Collection holding the state of each migration.",
        metavar="NAME", rule=_collection_name)
    topic_prefix: str = setting(
        naming.TOPIC_PREFIX, "Topics are named PREFIX.DB.COLLECTION.", metavar="PREFIX",
        rule=_kafka_name)
    group_prefix: str = setting(
        naming.GROUP_PREFIX, "Consumer groups are named PREFIX.DB.MIGRATION.", flag="--group",
        env="CDC_MIGRATOR_GROUP", key="group", metavar="PREFIX",
        rule=_name(_PLAIN_NAME, most_bytes=200))
    partitions: int = setting(6, "Partitions of a topic the tool creates.", metavar="N",
                              minimum=1, maximum=10_000)
    retry_deadline: float = setting(
        300.0, "tail, backfill, consume and run retry a lost MongoDB or Kafka with backoff; "
        "they give up (exit 1) when an outage lasts longer.", metavar="SECONDS", minimum=0,
        maximum=A_YEAR)
    mongo_timeout_ms: int = setting(
        10_000, "How long one MongoDB operation waits for a usable server "
        "(serverSelectionTimeoutMS).", metavar="MS", minimum=1, maximum=86_400_000)
    kafka_security_protocol: str | None = setting(
        None, "How to talk to Kafka (default PLAINTEXT).", choices=_KAFKA_PROTOCOLS,
        kafka="security_protocol")
    kafka_sasl_mechanism: str | None = setting(
        None, "SASL mechanism (with SASL_PLAINTEXT or SASL_SSL).", choices=_SASL_MECHANISMS,
        kafka="sasl_mechanism")
    kafka_sasl_username: str | None = setting(
        None, "SASL user name.", metavar="USER", kafka="sasl_plain_username",
        rule=_name(_PLAIN_NAME, most_bytes=200))
    kafka_sasl_password: str | None = setting(
        None, "SASL password; masked in every output. Prefer the variable: a flag is visible "
        "in the process list.", metavar="PW", secret=True, kafka="sasl_plain_password")
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
        everywhere=False)
    on_history_lost: str = setting(
        "fail", "When the server no longer has the change history to resume from: stop with "
        "exit 1 (fail), or capture again from now and backfill the whole collection again "
        "(rebackfill; safe, applying is idempotent; logged and shown by `status`).",
        choices=("fail", "rebackfill"), everywhere=False)
    instance_id: str | None = setting(
        None, "A stable name for this process, unique in the group (e.g. the pod name of a "
        "StatefulSet): restarted under it after a crash, it takes its partitions back at once "
        "instead of after the group's 30 s session timeout (static membership).",
        metavar="NAME", key=None, everywhere=False,
        rule=_name(_PLAIN_NAME, most_bytes=200))
    backfill_ranges: int = setting(
        32, "A backfill splits the collection into at most N _id ranges (at least 1,000 "
        "documents each), which its workers and processes share.", metavar="N", minimum=1,
        maximum=100_000, everywhere=False)
    lease_seconds: float = setting(
        30.0, "A backfill worker holds its range for this long past its last renewal; a "
        "worker killed or cut off loses the range to another worker after it.",
        metavar="SECONDS", minimum=0.5, maximum=86_400, everywhere=False)
    max_replication_lag: float | None = setting(
        None, "Hold the backfill and the consumers while a secondary is more than SECONDS "
        "behind the primary (replSetGetStatus). Default: not checked.", metavar="SECONDS",
        minimum=0, maximum=A_YEAR, everywhere=False)
    max_write_latency: float | None = setting(
        None, "Hold the backfill and the consumers for a while when a bulk write of the "
        "migration took longer than MS. Default: not checked.", metavar="MS", minimum=0,
        maximum=1000 * A_YEAR, everywhere=False)
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
        return options

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
                f"cannot use MONGODB_URI {mask_uri(self.mongodb_uri)!r}: "
                f"{mask_secrets(str(exc), *uri_secrets(self.mongodb_uri))}"
            ) from None

    @property
    def db(self) -> Database:
        return self.client[self.database_name]

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


_SECRET_WORDS = ("password", "secret", "token")


def is_secret_option(key: str) -> bool:
    """Whether a client option (of the file's ``[kafka]``/``[mongo]`` tables) is a secret."""
    return any(word in key.lower() for word in _SECRET_WORDS)


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


def option(name: str, kind: type, **how: Any) -> Setting:
    """The spec of an option of single commands: a flag only, checked as a setting is."""
    return Setting(help="", name=name, kind=kind, env=None, key=None, everywhere=False, **how)


#: The options of single commands (their help is the command's), declared and checked as the
#: settings are. ``rate`` is also what ``throttle`` sets and the state keeps.
OPTIONS: dict[str, Setting] = {spec.name: spec for spec in (
    option("batch_size", int, metavar="N", minimum=1, maximum=100_000),
    option("rate", float, metavar="DOCS/S", above=0),
    option("timeout", float, metavar="SECONDS", minimum=0, maximum=A_YEAR),
    option("interval", float, metavar="SECONDS", minimum=0.1, maximum=86_400),
    option("workers", int, metavar="N", minimum=1, maximum=1_000),
    option("sample", int, metavar="N", minimum=1, maximum=1_000_000),
    option("sample_ids", int, metavar="N", minimum=0, maximum=1_000_000),
    option("max_shapes", int, metavar="N", minimum=1, maximum=1_000_000),
    option("per_shape", int, metavar="N", minimum=1, maximum=1_000_000),
)}
