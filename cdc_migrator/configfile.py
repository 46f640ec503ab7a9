"""The configuration file: TOML with a key for every setting of the table (settings.py).

Precedence, highest first: command-line flag, environment variable, configuration file,
built-in default. The file gives defaults to the command line's parameters (the command line
resolves the order); the ``[kafka]`` and ``[mongo]`` tables pass client options (TLS, SASL,
authentication), which have no flags, to the Kafka clients and to ``MongoClient``. Each client
option also has a variable, which wins over the file: ``CDC_MIGRATOR_KAFKA_OPT_`` or
``CDC_MIGRATOR_MONGO_OPT_`` and the option's name in capitals (:func:`with_environment`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo.errors import ConfigurationError

from .base.checks import Setting, Source, brief, deprecated, option
from .base.masking import is_secret_option, mask_secrets
from .base.settings import KAFKA_MAX_INT, Settings
from .errors import SettingError, UsageError

DEFAULT_PATH = "cdc-migrator.toml"

TABLES = ("kafka", "mongo")
#: The variables of the client options: the prefix and the option's name in capitals.
ENV_PREFIXES = {"kafka": "CDC_MIGRATOR_KAFKA_OPT_", "mongo": "CDC_MIGRATOR_MONGO_OPT_"}


def keys() -> dict[str, str]:
    """File key -> name of the setting it gives a value to (the settings table's keys)."""
    return {spec.key_name: name for name, spec in Settings.table().items() if spec.key_name}


def old_keys() -> dict[str, str]:
    """Deprecated file key -> name of the setting it still gives a value to."""
    return {old: name for name, spec in Settings.table().items() for old in spec.old_keys}


@dataclass
class ConfigFile:
    """What one file says: parameter defaults and the client option tables."""

    path: Path | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    kafka: dict[str, Any] = field(default_factory=dict)
    mongo: dict[str, Any] = field(default_factory=dict)
    #: The client options a variable gave, by table (:func:`with_environment`).
    from_env: dict[str, set[str]] = field(default_factory=dict)


def find(explicit: str | None) -> Path | None:
    """The file to read: ``explicit`` (flag or variable), else ./cdc-migrator.toml if present."""
    if explicit:
        return Path(explicit)
    default = Path(DEFAULT_PATH)
    return default if default.is_file() else None


def load(path: Path | None) -> ConfigFile:
    """Read and check ``path``: a missing file, bad TOML, an unknown key or a value its setting
    (or client option) does not take is a UsageError, whether the command uses it or not."""
    if path is None:
        return ConfigFile()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    config = ConfigFile(path=path)
    known, old = keys(), old_keys()
    table = Settings.table()
    for key, value in data.items():
        if key in TABLES:
            if not isinstance(value, dict):
                raise UsageError(f"config file {path}: {key} must be a table ([{key}])")
            setattr(config, key, _client_options(path, key, value))
        elif key in known or key in old:
            name = known.get(key) or old[key]
            if key in old:
                deprecated(f"{key} in config file {path} is deprecated: use "
                           f"{table[name].key_name}")
                if table[name].key_name in data:  # the new key wins
                    continue
            spec = table[name]
            if spec.path and isinstance(value, str) and value:
                value = str(path.parent / value)  # relative to the file, not the cwd
            spec.check(value, Source("file", key, str(path)))
            config.defaults[name] = value
        else:
            raise UsageError(f"config file {path}: unknown key {key!r} (known: "
                             f"{', '.join([*known, *TABLES])})")
    return config


def _client_options(path: Path, table: str, options: dict[str, Any]) -> dict[str, Any]:
    known = kafka_option_names() if table == "kafka" else None
    for key, value in options.items():
        source = Source("file", f"[{table}] {key}", str(path))
        if table == "kafka" and key not in known:  # type: ignore[operator]
            raise UsageError(f"config file {path}: unknown key '{table}.{key}' (not a Kafka "
                             "client option shared by consumer, producer and admin client)")
        if table == "mongo" and not _is_mongo_option(key):
            raise UsageError(f"config file {path}: unknown key '{table}.{key}' (not a "
                             "MongoClient option)")
        if table == "kafka":
            _kafka_option_spec(key).check(value, source)
        else:
            _check_mongo_option(key, value, source)
    return dict(options)


def with_environment(config: ConfigFile, environ: Mapping[str, str]) -> ConfigFile:
    """``config`` with the client options of the variables over the file's: each value is
    text, checked and converted as the option takes it; an unknown option is a UsageError, an
    empty variable not set. MongoClient's names are case-insensitive
    (``CDC_MIGRATOR_MONGO_OPT_MAXPOOLSIZE`` replaces the file's ``maxPoolSize``)."""
    tables = {"kafka": dict(config.kafka), "mongo": dict(config.mongo)}
    from_env: dict[str, set[str]] = {table: set() for table in TABLES}
    for variable, text in sorted(environ.items()):
        for table, prefix in ENV_PREFIXES.items():
            if not variable.startswith(prefix) or not text:
                continue
            key = variable.removeprefix(prefix).lower()
            source = Source("env", variable)
            if table == "kafka":
                if key not in kafka_option_names():
                    raise UsageError(f"environment variable {variable}: {key!r} is not a Kafka "
                                     "client option shared by consumer, producer and admin "
                                     "client")
                tables[table][key] = _kafka_option_spec(key).check(text, source)
            else:
                if not _is_mongo_option(key):
                    raise UsageError(f"environment variable {variable}: {key!r} is not a "
                                     "MongoClient option")
                tables[table] = {k: v for k, v in tables[table].items() if k.lower() != key}
                tables[table][key] = _check_mongo_option(key, text, source)
            from_env[table].add(key)
    return dataclasses.replace(config, kafka=tables["kafka"], mongo=tables["mongo"],
                               from_env=from_env)


def _kafka_option_spec(key: str) -> Setting:
    """How a ``[kafka]`` option is checked: as the setting that gives it, when one does (so
    ``security_protocol`` is one of the protocols); else by the kind of kafka-python's default
    (a number of milliseconds or bytes is an integer of at least 0)."""
    for spec in Settings.table().values():
        if spec.kafka == key:
            return spec
    from kafka import KafkaConsumer

    default = KafkaConsumer.DEFAULT_CONFIG[key]
    if isinstance(default, bool):
        return option(key, bool)
    if isinstance(default, int) or key.endswith(("_ms", "_bytes")):
        return option(key, int, minimum=0, maximum=KAFKA_MAX_INT)
    return option(key, str)


def _check_mongo_option(key: str, value: Any, source: Source) -> Any:
    """A ``[mongo]`` option as pymongo's own validators take it (and convert it: a variable's
    text ``"20"`` is 20); floats finite."""
    from pymongo import common

    try:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("not a finite number")
        if isinstance(value, (list, dict, dt.date, dt.time)):
            raise TypeError("not a string, a number or a boolean")
        return common.validate(key, value)[1]
    except (ValueError, TypeError, OSError, ConfigurationError) as exc:  # OSError: a file
        secret = is_secret_option(key)  # pymongo's message may quote the value
        shown, why = ("***", "") if secret else (brief(value), f" ({exc})")
        raise SettingError(f"invalid value {shown} for {source}: expected a value MongoClient "
                           f"takes{why}") from None


# Kafka options the tool sets itself, or whose values are Python objects TOML cannot express.
_KAFKA_NOT_CONFIGURABLE = {
    "bootstrap_servers", "request_timeout_ms", "max_in_flight_requests_per_connection",
    "api_version", "kafka_client", "selector", "metric_reporters", "socket_options",
    "ssl_context", "sasl_oauth_token_provider",
}


def kafka_option_names() -> set[str]:
    """Options every Kafka client of the tool accepts and a file may set."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    return (set(KafkaConsumer.DEFAULT_CONFIG) & set(KafkaProducer.DEFAULT_CONFIG)
            & set(KafkaAdminClient.DEFAULT_CONFIG)) - _KAFKA_NOT_CONFIGURABLE


# MongoClient options the tool sets itself, or whose values are Python objects.
# The codec options are the tool's one policy (codec.py): a file cannot change them.
_MONGO_NOT_CONFIGURABLE = {"serverselectiontimeoutms", "tz_aware", "tzinfo", "document_class",
                           "type_registry", "datetime_conversion", "uuidrepresentation",
                           "unicode_decode_error_handler", "event_listeners",
                           "server_api", "auto_encryption_opts", "driver"}


def _is_mongo_option(key: str) -> bool:
    from pymongo import common

    return key.lower() in common.VALIDATORS and key.lower() not in _MONGO_NOT_CONFIGURABLE


def effective(settings: Settings, source_of: Callable[[str], str],
              config: ConfigFile) -> dict[str, Any]:
    """Each setting's effective value (secrets masked) and where it came from, by file key.

    ``source_of`` names the source of a setting: "flag", "env", "file" or "default".
    """
    shown: dict[str, Any] = {"config_file": str(config.path) if config.path else None}
    for name, spec in Settings.table().items():
        if not spec.key_name:
            continue
        value = getattr(settings, name)
        if isinstance(value, Path) or (spec.unit and value is not None):
            value = spec.text(value)  # a duration with its unit, as the file takes it
        if spec.secret and value:
            value = "***"
        elif isinstance(value, str):
            value = mask_secrets(value)  # the credentials of a connection string
        shown[spec.key_name] = {"value": value, "source": source_of(name)}
    for table in TABLES:
        options = getattr(config, table)
        from_env = config.from_env.get(table, set())
        kinds = (["file"] if set(options) - from_env else []) + (["env"] if from_env else [])
        shown[table] = {"value": {k: "***" if is_secret_option(k) else v
                                  for k, v in options.items()},
                        "source": " and ".join(kinds) or "default"}
    return shown


def to_toml(shown: Mapping[str, Any]) -> str:
    """``effective``'s result as a TOML document, each value's source in a comment."""
    path = shown.get("config_file")
    lines = ["# effective configuration: flag > environment > file > default",
             f"# config file: {path or 'none'}"]
    tables = []
    for key, entry in shown.items():
        if key == "config_file":
            continue
        if key in TABLES:
            tables.append((key, entry))
        elif entry["value"] is None:
            lines.append(f"# {key} is not set  # {entry['source']}")
        else:
            lines.append(f"{key} = {_toml_value(entry['value'])}  # {entry['source']}")
    for key, entry in tables:
        if not entry["value"]:
            lines.append(f"# no [{key}] client options")
            continue
        lines.append(f"\n[{key}]  # {entry['source']}")
        lines += [f"{k} = {_toml_value(v)}" for k, v in entry["value"].items()]
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return _toml_string(str(value))


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes, control characters and DEL escaped (TOML
    takes none of them raw); every other character as it is."""
    escaped = "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F
                      else "\\" + c if c in '"\\' else c for c in text)
    return f'"{escaped}"'
