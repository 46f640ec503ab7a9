"""Kafka plumbing: topics, clients, and the consumer group's lag.

Lag of a partition is its end offset minus the group's committed offset (the whole partition
when nothing is committed yet). It counts events produced but not yet applied and committed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from .config import Settings
from .errors import ServiceUnavailable

#: The largest record the tool writes: a document of MongoDB's maximum size (16 MiB) in its
#: envelope, with room for the envelope and for compression that cannot shrink the data. The
#: topics the tool creates allow records of this size, and its producers and consumers agree.
MAX_RECORD_BYTES = 17 << 20


def client_options(settings: Settings) -> dict[str, Any]:
    """Options every Kafka client gets: bootstrap servers plus TLS/SASL pass-through.

    Reconnects back off to at most 2 s (the client's default is 30 s, so a broker back from an
    outage would wait that long to be noticed), and one bootstrap attempt gives up within the
    retry deadline (at most 10 s): the caller's retries decide how long to keep trying.
    """
    bootstrap_ms = int(min(10_000, max(1_000, settings.retry_deadline * 1000)))
    return {"bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
            "reconnect_backoff_max_ms": 2_000, "bootstrap_timeout_ms": bootstrap_ms,
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
    """A producer that waits for the broker's acknowledgement of every record.

    Batches are LZ4-compressed: envelopes of documents compress well, at a fraction of gzip's
    cost, for the producer, the broker (which decompresses every batch to validate it)
    and the consumer alike. kafka-python checksums every batch (CRC-32C); the ``crc32c``
    package, a dependency, does it in C instead of pure Python (docs/benchmarks.md).
    ``kafka_options`` of the settings may set another ``compression_type``.
    """
    options = dict(acks="all", linger_ms=5, batch_size=256 * 1024, max_request_size=16 << 20,
                   retries=2**31 - 1, max_in_flight_requests_per_connection=1,
                   request_timeout_ms=30_000, compression_type="lz4")
    # Settings' kafka_options (in client_options) override these; the caller's overrides win.
    return KafkaProducer(**{**options, **client_options(settings), **overrides})


@dataclass
class _Record:
    topic: str
    key: bytes | None
    value: bytes
    partition: int | None
    future: Any = None


class Publisher:
    """Sends records in batches that reach the broker whole, through broker outages.

    :meth:`flush` returns only once the broker acknowledged every record sent since the last
    flush. A record whose delivery failed is sent again together with every record after it,
    in order (so a partition's records keep their order, fences included); a broker that does
    not answer is waited for, with the retries and the deadline of ``retry``. Resent records
    may reach the topic twice: delivery is at-least-once, which the consumer's guarded,
    idempotent apply makes harmless.
    """

    FLUSH_WAIT = 5.0  # seconds one flush waits before the broker counts as unavailable

    def __init__(self, settings: Settings, retry: Any, **overrides: Any) -> None:
        self.settings = settings
        self.retry = retry
        # send() must not block a minute on metadata while the broker is away.
        self.overrides = {"max_block_ms": 10_000, **overrides}
        self._producer: KafkaProducer | None = None
        self._pending: list[_Record] = []
        self._unacknowledged = False  # sent since the last successful flush

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             partition: int | None = None) -> None:
        record = _Record(topic, key, value, partition)
        self._pending.append(record)
        self._unacknowledged = True
        self._send(record)

    def flush(self) -> int:
        """Wait until every record sent since the last flush is acknowledged; their number."""
        self.retry.call("Kafka", self._deliver)
        count = len(self._pending)
        self._pending = []
        self._unacknowledged = False
        return count

    def forget(self) -> None:
        """Stop tracking the unflushed records: the caller will produce them again."""
        self._pending = []

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=0 if self._unacknowledged else 10)
        except KafkaError:
            _abandon(producer)

    def _client(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = self.retry.call("Kafka", producer, self.settings, **self.overrides)
        return self._producer

    def _send(self, record: _Record) -> None:
        try:
            record.future = self._client().send(record.topic, key=record.key,
                                                value=record.value, partition=record.partition)
        except KafkaError as exc:
            if not getattr(exc, "retriable", False):
                raise
            record.future = None  # not queued: flush sends it again

    def _deliver(self) -> None:
        for index, record in enumerate(self._pending):
            if record.future is None or (record.future.is_done and record.future.failed()):
                for later in self._pending[index:]:
                    self._send(later)
                break
        self._client().flush(timeout=self.FLUSH_WAIT)
        for record in self._pending:
            if record.future is None:
                raise KafkaTimeoutError("the producer could not queue the record")
            record.future.get(timeout=0)  # raises the delivery's error


def _abandon(producer: KafkaProducer) -> None:
    """Close a producer whose unacknowledged records are given up.

    They are produced again from the saved position on the next start. kafka-python has no
    public call for this: ``close`` insists on flushing first, and its exit hook would retry
    and print a traceback.
    """
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
    producer._closed = True


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
