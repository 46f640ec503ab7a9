"""Settings shared by every command, and the connections made from them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pymongo
from pymongo.database import Database
from pymongo.errors import ConfigurationError, InvalidURI

from ..errors import UsageError
from . import codec

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


# A connection string inside free text: up to the last "@" before the next whitespace.
_URI_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)\S*@")
# Shorter secrets are not registered for masking: they would blank out ordinary words.
MIN_SECRET_LENGTH = 4


def mask_secrets(text: str, *secrets: str | None) -> str:
    """Remove the credentials of connection strings and the given secrets from ``text``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return _URI_CREDENTIALS.sub(r"\1***@", text)


def uri_secrets(uri: str) -> list[str]:
    """The credentials of ``uri`` (all of them, and the password alone), to be masked wherever
    they might appear, e.g. quoted in part by a driver's message about a malformed URI."""
    rest = uri.partition("://")[2]
    if "@" not in rest:
        return []
    userinfo = rest.rpartition("@")[0]
    password = userinfo.partition(":")[2]
    return [s for s in (userinfo, password) if len(s) >= MIN_SECRET_LENGTH]


@dataclass
class Settings:
    """Where the services are and how the tool names what it creates."""

    mongodb_uri: str = DEFAULT_MONGODB_URI
    database: str | None = None
    kafka_bootstrap_servers: str = DEFAULT_KAFKA
    transforms: Path = Path("transforms")
    state_collection: str = "cdc_migrator_state"
    topic_prefix: str = "cdc-migrator"
    group_id: str = "cdc-migrator"
    partitions: int = 6
    mongo_timeout_ms: int = 10_000
    # How long a long-running command rides out a lost MongoDB or Kafka (see retry.py).
    retry_deadline: float = 300.0
    kafka_options: dict[str, Any] = field(default_factory=dict)
    mongo_options: dict[str, Any] = field(default_factory=dict)

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
        return parsed["database"]

    @cached_property
    def client(self) -> pymongo.MongoClient:
        _ = self.database_name  # validates the URI first, with a clear message
        try:
            return pymongo.MongoClient(
                self.mongodb_uri, serverSelectionTimeoutMS=self.mongo_timeout_ms,
                **{**self.mongo_options, **codec.client_options()},
            )
        except (InvalidURI, ConfigurationError, ValueError, TypeError) as exc:
            raise UsageError(
                f"cannot use MONGODB_URI {mask_uri(self.mongodb_uri)!r}: "
                f"{mask_secrets(str(exc), *uri_secrets(self.mongodb_uri))}"
            ) from None

    @property
    def db(self) -> Database:
        return self.client[self.database_name]

    def environment(self) -> dict[str, str]:
        """The environment variables that make a ``cdc-migrator`` command use these services
        and names (the ``envvar`` of its options): for running one as a subprocess."""
        return {
            "MONGODB_URI": self.mongodb_uri,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "CDC_MIGRATOR_TRANSFORMS": str(self.transforms),
            "CDC_MIGRATOR_TOPIC_PREFIX": self.topic_prefix,
            "CDC_MIGRATOR_GROUP": self.group_id,
            "CDC_MIGRATOR_PARTITIONS": str(self.partitions),
        }

    def topic(self, collection: str) -> str:
        """The Kafka topic of one migrated collection."""
        return f"{self.topic_prefix}.{self.database_name}.{collection}"

    def dlq_topic(self, collection: str) -> str:
        return f"{self.topic(collection)}.dlq"

    def close(self) -> None:
        if "client" in self.__dict__:
            self.client.close()
            del self.__dict__["client"]
