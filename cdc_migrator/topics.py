"""Kafka plumbing: topics, clients, and the consumer group's lag.

Lag of a partition is its end offset minus the group's committed offset (the whole partition
when nothing is committed yet). It counts events produced but not yet applied and committed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, TopicAlreadyExistsError

from .config import Settings
from .errors import ServiceUnavailable


def client_options(settings: Settings) -> dict[str, Any]:
    """Options every Kafka client gets: bootstrap servers plus TLS/SASL pass-through."""
    return {"bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
            **settings.kafka_options}


def admin(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(request_timeout_ms=15_000, **client_options(settings))


def ensure_topic(settings: Settings, topic: str, partitions: int | None = None) -> int:
    """Create ``topic`` when missing; return its partition count."""
    client = admin(settings)
    try:
        existing = partition_count(client, topic)
        if existing:
            return existing
        try:
            client.create_topics({topic: {"num_partitions": partitions or settings.partitions,
                                           "replication_factor": -1}})
        except TopicAlreadyExistsError:
            pass
        client.wait_for_topics([topic], timeout_ms=30_000)
        return partition_count(client, topic)
    finally:
        client.close()


def partition_count(client: KafkaAdminClient, topic: str) -> int:
    if topic not in client.list_topics():
        return 0
    described = client.describe_topics([topic])
    return len(described[0]["partitions"]) if described else 0


def delete_topics(settings: Settings, topics: list[str]) -> None:
    client = admin(settings)
    try:
        present = set(client.list_topics())
        gone = [t for t in topics if t in present]
        if gone:
            client.delete_topics(gone)
    finally:
        client.close()


def delete_group(settings: Settings, group: str) -> None:
    """Delete a consumer group's committed offsets (no-op when it does not exist)."""
    client = admin(settings)
    try:
        client.delete_groups([group])
    except KafkaError:
        pass  # unknown or already empty group: nothing to forget
    finally:
        client.close()


def producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """A producer that waits for the broker's acknowledgement of every record."""
    options = dict(acks="all", linger_ms=5, batch_size=256 * 1024, max_request_size=16 << 20,
                   retries=2**31 - 1, max_in_flight_requests_per_connection=1,
                   request_timeout_ms=30_000)
    options.update(overrides)
    return KafkaProducer(**client_options(settings), **options)


@dataclass
class PartitionLag:
    partition: int
    end: int
    committed: int | None

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0)


@dataclass
class Lag:
    """The group's backlog on one topic, per partition."""

    topic: str
    group: str
    partitions: list[PartitionLag] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "group": self.group, "total": self.total,
                "partitions": {str(p.partition): {"end": p.end, "committed": p.committed,
                                                  "lag": p.lag} for p in self.partitions}}


def group_lag(settings: Settings, topic: str, group: str) -> Lag:
    """End offsets minus committed offsets of ``group`` on every partition of ``topic``.

    Uses a consumer that never joins the group, so it can run beside the group's members.
    """
    consumer = KafkaConsumer(group_id=group, enable_auto_commit=False,
                             request_timeout_ms=30_000, **client_options(settings))
    try:
        ids = consumer.partitions_for_topic(topic)
        if not ids:
            return Lag(topic, group)
        tps = [TopicPartition(topic, p) for p in sorted(ids)]
        ends = consumer.end_offsets(tps)
        return Lag(topic, group, [PartitionLag(tp.partition, ends[tp], consumer.committed(tp))
                                  for tp in tps])
    finally:
        consumer.close()


def wait_for_broker(settings: Settings, deadline_s: float) -> None:
    """Block until a broker answers, or raise ServiceUnavailable after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            admin(settings).close()
            return
        except KafkaError as exc:
            if time.monotonic() > end:
                raise ServiceUnavailable(
                    f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: "
                    f"{type(exc).__name__}") from None
            time.sleep(1)
