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

from . import codec
from .errors import UsageError

DEFAULT_MONGODB_URI = "mongodb://127.0.0.1:27017/app?directConnection=true"
DEFAULT_KAFKA = "127.0.0.1:9092"


def mask_uri(uri: str) -> str:
    """``uri`` with any password replaced by ``***``, safe to print or log."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", uri)


def mask_secrets(text: str, *secrets: str | None) -> str:
    """Remove passwords of connection strings and the given secrets from ``text``."""
    text = re.sub(r"(mongodb(?:\+srv)?://[^:/@\s]+:)[^@/\s]*@", r"\1***@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


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
    def database_name(self) -> str:
        if self.database:
            return self.database
        try:
            parsed = pymongo.uri_parser.parse_uri(self.mongodb_uri, warn=True)
        except (InvalidURI, ConfigurationError, ValueError) as exc:
            raise UsageError(
                f"MONGODB_URI {mask_uri(self.mongodb_uri)!r} is not a valid MongoDB URI: "
                f"{mask_secrets(str(exc))}"
            ) from None
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
                f"cannot use MONGODB_URI {mask_uri(self.mongodb_uri)!r}: {mask_secrets(str(exc))}"
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
