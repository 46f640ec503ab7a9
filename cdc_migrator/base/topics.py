"""Kafka plumbing: topics, clients, and the consumer group's lag.

Lag of a partition is its end offset minus the group's committed offset (the whole partition
when nothing is committed yet). It counts events produced but not yet applied and committed.
The committed offsets are read first, the end offsets after them: both only grow, so a commit
or a record between the reads can only make the lag larger than it was at either moment, never
smaller, and never negative.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kafka_errors
from kafka.admin import ConfigResource, OffsetSpec
from kafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAlreadyExistsError,
)

from ..errors import RecordTooLarge, Refused, UsageError
from .settings import Settings

log = logging.getLogger("cdc_migrator.topics")

#: The largest record the tool writes unless told otherwise (``--max-record-bytes``): a
#: document of MongoDB's maximum size (16 MiB) in its envelope, with room for the envelope and
#: for compression that cannot shrink the data.
MAX_RECORD_BYTES = 17 << 20

#: How the tool creates its topics: nothing is deleted while a migration is live (a paused
#: migration or a long backfill must not lose events before they are consumed: no time or
#: size retention, no compaction), and a record of the record limit fits.
TOPIC_CONFIGS = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete",
                 "max.message.bytes": str(MAX_RECORD_BYTES)}
_RETENTION = ("retention.ms", "retention.bytes", "cleanup.policy")
#: How long the broker keeps a consumer in its group after its last heartbeat: a consumer
#: killed without static membership (``--instance-id``) holds its partitions that long.
CONSUMER_SESSION_TIMEOUT_MS = 30_000
_warned: set[tuple[str, str]] = set()  # (topic, what): warnings given once per process
_warned_lock = threading.Lock()
#: The most record bytes the producer gathers for one partition into one batch.
PRODUCER_BATCH = 256 * 1024
#: Each topic's ``max.message.bytes`` as :func:`check_topic_configs` last read it here.
_limits: dict[str, int] = {}


def topic_limit(topic: str) -> int | None:
    """``topic``'s ``max.message.bytes`` as read by this process, None before it was read."""
    return _limits.get(topic)


def group_bytes(topic: str, most: int) -> int:
    """The most event bytes one record of several events on ``topic`` carries: ``most``, or
    half the topic's ``max.message.bytes`` where that is smaller. The broker checks its limit
    per batch of records, so records that are each under it are only safe together below it."""
    limit = _limits.get(topic)
    return most if limit is None else max(1, min(most, limit // 2))


def record_limit(settings: Settings) -> int:
    """The largest record the tool writes: ``--max-record-bytes``, or :data:`MAX_RECORD_BYTES`."""
    return settings.max_record_bytes or MAX_RECORD_BYTES


def topic_configs(settings: Settings) -> dict[str, str]:
    """The configuration of a topic the tool creates (see :data:`TOPIC_CONFIGS`)."""
    configs = {**TOPIC_CONFIGS, "max.message.bytes": str(record_limit(settings))}
    if settings.topic_min_insync_replicas:
        configs["min.insync.replicas"] = str(settings.topic_min_insync_replicas)
    return configs


def client_options(settings: Settings) -> dict[str, Any]:
    """Options every Kafka client gets: bootstrap servers plus TLS/SASL pass-through.

    Reconnects back off to at most 2 s (the client's default is 30 s, so a broker back from an
    outage would wait that long to be noticed), and one bootstrap attempt gives up within the
    retry deadline (at most 10 s, ``Settings.kafka_bootstrap_ms``): the caller's retries
    decide how long to keep trying.
    """
    return {"bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
            "reconnect_backoff_max_ms": 2_000,
            "bootstrap_timeout_ms": settings.kafka_bootstrap_ms,
            **settings.kafka_client_options}


def admin(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(request_timeout_ms=15_000, **client_options(settings))


def ensure_topic(settings: Settings, topic: str, partitions: int | None = None) -> int:
    """Create ``topic`` (with :func:`topic_configs`) when missing; return its partition count.

    A topic created by someone else is checked: see :func:`check_topic_configs`.
    """
    client = admin(settings)
    try:
        existing = partition_count(client, topic)
        if not existing:
            create_topic(client, settings, topic, partitions or settings.partitions)
            client.wait_for_topics([topic], timeout_ms=30_000)
            existing = partition_count(client, topic)
        check_topic_configs(client, settings, topic)
        return existing
    finally:
        client.close()


def create_topic(client: KafkaAdminClient, settings: Settings, topic: str,
                 partitions: int) -> None:
    """Create ``topic`` with the replication the settings ask for, checked against the cluster
    first; a refusal by the cluster is one line naming the setting to change.

    Without ``--max-record-bytes``, a cluster that caps ``max.message.bytes`` below
    :data:`MAX_RECORD_BYTES` (a managed one's policy) gets a topic with its own default
    instead, with a warning: larger documents then travel by key only.
    """
    factor = check_replication(client, settings)
    configs = topic_configs(settings)
    refused = _create(client, topic, partitions, factor, configs)
    if refused and settings.max_record_bytes is None and "max.message.bytes" in refused[1]:
        log.warning("Kafka refused max.message.bytes=%s for topic %s (%s): creating it with the "
                    "cluster's default; documents larger than that travel by key only (set "
                    "--max-record-bytes to the cluster's limit to carry more whole)",
                    configs.pop("max.message.bytes"), topic, refused[1])
        with _warned_lock:  # that was the warning about its record size
            _warned.add((topic, "size"))
        refused = _create(client, topic, partitions, factor, configs)
    if refused:
        error, message = refused
        asked = [f"{k}={v}" for k, v in configs.items() if k not in _RETENTION]
        asked.append(f"replication factor {factor}" if factor > 0 else
                     "the cluster's default replication factor")
        raise Refused(f"Kafka refused to create topic {topic} ({', '.join(asked)}): "
                      f"{error.__name__}: {message}. Check --topic-replication-factor, "
                      "--topic-min-insync-replicas and --max-record-bytes")


def _create(client: KafkaAdminClient, topic: str, partitions: int, factor: int,
            configs: dict[str, str]) -> tuple[type[KafkaError], str] | None:
    """Create the topic; None when done (or it exists), else the cluster's error and reason."""
    answer = client.create_topics({topic: {"num_partitions": partitions,
                                           "replication_factor": factor, "configs": configs}},
                                  raise_errors=False)
    (result,) = answer["topics"]
    error = kafka_errors.for_code(result["error_code"])
    if error in (kafka_errors.NoError, TopicAlreadyExistsError):
        return None
    if getattr(error, "retriable", False):
        raise error(result["error_message"])  # the caller's retries ride it out
    return error, (result["error_message"] or error.description).rstrip(".")


def check_replication(client: KafkaAdminClient, settings: Settings) -> int:
    """The replication factor to create topics with (-1: the cluster's default), refused in one
    line when the cluster has fewer brokers, or when ``min.insync.replicas`` exceeds it (the
    tool produces with acks=all: no record could ever be acknowledged)."""
    factor, least = settings.topic_replication_factor, settings.topic_min_insync_replicas
    if factor and least and least > factor:
        raise UsageError(f"--topic-min-insync-replicas {least} is more than "
                         f"--topic-replication-factor {factor}: no record could be "
                         "acknowledged; give at most the replication factor")
    if not factor and not least:
        return -1
    brokers = [b for b in client.describe_cluster()["brokers"] if not b.get("is_fenced")]
    if factor and factor > len(brokers):
        raise Refused(f"--topic-replication-factor {factor} is more than the {len(brokers)} "
                      "broker(s) of the Kafka cluster: give at most "
                      f"{len(brokers)}")
    if least and least > len(brokers):
        raise Refused(f"--topic-min-insync-replicas {least} is more than the {len(brokers)} "
                      "broker(s) of the Kafka cluster: no record could be acknowledged; give "
                      f"at most {len(brokers)}")
    return factor or -1


def check_topic_configs(client: KafkaAdminClient, settings: Settings, topic: str) -> None:
    """Refuse a topic whose settings can delete events before they are consumed, or whose
    ``min.insync.replicas`` exceeds its replicas; warn once when its records cannot hold the
    largest document.

    The effective values are read (the broker's defaults included), so a topic created by
    someone else with the cluster's default retention (7 days unless set otherwise) is refused
    with the command that fixes it.
    """
    values = read_topic_configs(client, topic, [*TOPIC_CONFIGS, "min.insync.replicas"])
    if any(values.get(name) is None for name in TOPIC_CONFIGS):
        _warn_once(topic, "unread", "cannot read the settings of topic %s (DescribeConfigs not "
                   "allowed?): make sure it deletes nothing while the migration runs (%s)",
                   topic, fix_command(settings, topic, "retention.ms=-1,retention.bytes=-1,"
                                      "cleanup.policy=delete"))
        return
    losing = []
    if "compact" in values["cleanup.policy"].split(","):
        losing.append(f"cleanup.policy={values['cleanup.policy']} (compaction keeps only the "
                      "newest record of a key)")
    if int(values["retention.ms"]) >= 0:
        losing.append(f"retention.ms={values['retention.ms']} (records older than "
                      f"{_duration(int(values['retention.ms']))} are deleted)")
    if int(values["retention.bytes"]) >= 0:
        losing.append(f"retention.bytes={values['retention.bytes']} (a partition loses its "
                      "oldest records beyond that size)")
    if losing:
        raise Refused(f"topic {topic} can delete events before they are consumed: "
                      f"{'; '.join(losing)}. Fix: " + fix_command(
                          settings, topic, "retention.ms=-1,retention.bytes=-1,"
                          "cleanup.policy=delete"))
    _check_insync(client, settings, topic, values.get("min.insync.replicas"))
    _limits[topic] = int(values["max.message.bytes"])
    limit = record_limit(settings)
    if int(values["max.message.bytes"]) < limit:
        _warn_once(topic, "size", "topic %s takes records of at most max.message.bytes=%s, less "
                   "than the %d %s: larger documents travel as key-only events or become dead "
                   "letters. To carry them whole: %s", topic, values["max.message.bytes"],
                   limit, "a 16 MiB document needs" if limit == MAX_RECORD_BYTES else
                   "of --max-record-bytes",
                   fix_command(settings, topic, f"max.message.bytes={limit}"))


def read_topic_configs(client: KafkaAdminClient, topic: str,
                       names: list[str]) -> dict[str, Any]:
    """The effective values of ``names`` for ``topic`` (the broker's defaults included)."""
    described = client.describe_configs(
        [ConfigResource("TOPIC", topic, names)], config_filter="all")
    return {name: entry.get("value") for name, entry in
            ((described.get("topic") or {}).get(topic) or {}).items()}


def _check_insync(client: KafkaAdminClient, settings: Settings, topic: str,
                  least: str | None) -> None:
    """Refuse a topic on which no record could be acknowledged: the tool produces with
    acks=all, and a broker answers that only once ``min.insync.replicas`` replicas have it."""
    if least is None:
        return
    described = client.describe_topics([topic])
    partitions = described[0]["partitions"] if described else []
    replicas = min((len(p["replica_nodes"]) for p in partitions), default=0)
    if partitions and int(least) > replicas:
        raise Refused(f"topic {topic} has min.insync.replicas={least} but {replicas} "
                      "replica(s) per partition: no record could be acknowledged (the tool "
                      "produces with acks=all). Fix: " + fix_command(
                          settings, topic, f"min.insync.replicas={replicas}"))


def fix_command(settings: Settings, topic: str, configs: str) -> str:
    """The ``kafka-configs.sh`` line that gives ``topic`` the ``configs`` (``k=v,...``), with
    ``--command-config`` and what its file holds when the connection uses TLS or SASL."""
    options = settings.kafka_client_options
    protocol = str(options.get("security_protocol") or "PLAINTEXT").upper()
    secured = protocol != "PLAINTEXT"
    command = (f"kafka-configs.sh --bootstrap-server {settings.kafka_bootstrap_servers}"
               f"{' --command-config client.properties' if secured else ''} --alter "
               f"--entity-type topics --entity-name {topic} --add-config {configs}")
    if not secured:
        return command
    held = [f"security.protocol={protocol}"]
    if options.get("sasl_mechanism"):
        held += [f"sasl.mechanism={str(options['sasl_mechanism']).upper()}",
                 "sasl.jaas.config (the mechanism's login module with the credentials)"]
    if options.get("ssl_cafile"):
        held.append(f"ssl.truststore.type=PEM, ssl.truststore.location={options['ssl_cafile']}")
    if options.get("ssl_certfile"):
        held.append("ssl.keystore.type=PEM with the client certificate and key")
    return (f"{command} (client.properties: this connection for Kafka's tools: "
            f"{', '.join(held)}; see docs/deploy.md)")


def _warn_once(topic: str, what: str, message: str, *args: Any) -> None:
    with _warned_lock:
        if (topic, what) in _warned:
            return
        _warned.add((topic, what))
    log.warning(message, *args)


def _duration(ms: int) -> str:
    for unit, size in (("days", 86_400_000), ("hours", 3_600_000), ("minutes", 60_000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms} ms"


def partition_count(client: KafkaAdminClient, topic: str) -> int:
    if topic not in client.list_topics():
        return 0
    described = client.describe_topics([topic])
    return len(described[0]["partitions"]) if described else 0


def group_members(settings: Settings, group: str) -> int:
    """How many members the consumer group has now (0 when it does not exist)."""
    client = admin(settings)
    try:
        described = client.describe_groups([group]).get(group) or {}
        return len(described.get("members") or [])
    finally:
        client.close()


@dataclass
class GroupMember:
    """One member of a consumer group, as the broker describes it."""

    member_id: str
    client_id: str
    host: str
    instance_id: str | None  # static membership (--instance-id)
    partitions: list[int]  # of the topic asked about, assigned to it


def group_description(settings: Settings, group: str, topic: str) -> list[GroupMember]:
    """The members of ``group`` now, with the partitions of ``topic`` each holds."""
    client = admin(settings)
    try:
        described = client.describe_groups([group]).get(group) or {}
    finally:
        client.close()
    found = []
    for member in described.get("members") or []:
        assignment = member.get("member_assignment") or {}
        partitions = sorted(p for assigned in assignment.get("assigned_partitions") or []
                            if assigned.get("topic") == topic
                            for p in assigned.get("partitions") or [])
        found.append(GroupMember(str(member.get("member_id")), str(member.get("client_id")),
                                 str(member.get("client_host")).lstrip("/"),
                                 member.get("group_instance_id"), partitions))
    return found


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
    options = dict(acks="all", linger_ms=5, batch_size=PRODUCER_BATCH,
                   max_request_size=record_limit(settings),
                   retries=2**31 - 1, max_in_flight_requests_per_connection=1,
                   request_timeout_ms=30_000, compression_type="lz4")
    # Settings' kafka_options (in client_options) override these; the caller's overrides win.
    return KafkaProducer(**{**options, **client_options(settings), **overrides})


@dataclass
class Record:
    """One record to produce, and what to produce in its place should it be too large.

    ``fallback`` gives the records sent instead (in order, each with its own fallback) when the
    producer or the broker refuses this record as larger than it accepts (the topic's
    ``max.message.bytes``): for an event, the same event without its document. It is called
    only then.
    """

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None
    fallback: Callable[[], list[Record]] | None = None
    dead_letter: bool = False  # a dead letter, counted by the caller (dead_lettered)
    future: Any = None
    refused: KafkaError | None = None  # the producer's own refusal, before any send

    def too_large(self) -> bool:
        """Whether this record was refused for its size. A record of at most half the
        topic's known limit was not: its batch was, or it failed with another batch that was
        (kafka-python's idempotent producer then fails every batch in flight)."""
        if isinstance(self.refused, MessageSizeTooLargeError):
            return True
        future = self.future
        if not (future is not None and future.is_done and future.failed()
                and isinstance(future.exception, MessageSizeTooLargeError)):
            return False
        limit = _limits.get(self.topic)
        return limit is None or len(self.value) > limit // 2


class Publisher:
    """Sends records in batches that reach the broker whole, through broker outages.

    :meth:`flush` returns only once the broker acknowledged every record sent since the last
    flush. A record whose delivery failed is sent again together with every record after it,
    in order (so a partition's records keep their order, fences included); a broker that does
    not answer is waited for, with the retries and the deadline of ``retry``. Resent records
    may reach the topic twice: delivery is at-least-once, which the consumer's guarded,
    idempotent apply makes harmless. A record refused as too large is replaced by its
    ``fallback`` records (see :class:`Record`); with none, :class:`RecordTooLarge` is raised.
    """

    FLUSH_WAIT = 5.0  # seconds one flush waits before the broker counts as unavailable

    def __init__(self, settings: Settings, retry: Any, **overrides: Any) -> None:
        self.settings = settings
        self.retry = retry
        # send() must not block a minute on metadata while the broker is away.
        self.overrides = {"max_block_ms": 10_000, **overrides}
        self._producer: KafkaProducer | None = None
        self._pending: list[Record] = []
        self._unacknowledged = False  # sent since the last successful flush
        #: Dead letters acknowledged by the last flush (fallbacks of records too large).
        self.dead_lettered = 0

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             partition: int | None = None,
             fallback: Callable[[], list[Record]] | None = None) -> None:
        self.send_record(Record(topic, key, value, partition, fallback))

    def send_record(self, record: Record) -> None:
        self._pending.append(record)
        self._unacknowledged = True
        self._send(record)

    def flush(self) -> int:
        """Wait until every record sent since the last flush is acknowledged; their number
        (a record sent in place of a larger one counts as that one)."""
        count = len(self._pending)
        self.retry.call("Kafka", self._deliver)
        self.dead_lettered = sum(1 for r in self._pending if r.dead_letter)
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

    def _client(self, topic: str | None = None) -> KafkaProducer:
        if self._producer is None:
            # A batch stays within half the limit of the topic of the records (group_bytes).
            topic = topic or next((r.topic for r in self._pending), None)
            batch = {"batch_size": PRODUCER_BATCH if topic is None
                     else group_bytes(topic, PRODUCER_BATCH)}
            self._producer = self.retry.call("Kafka", producer, self.settings,
                                             **{**batch, **self.overrides})
        return self._producer

    def _send(self, record: Record) -> None:
        record.refused = None
        try:
            record.future = self._client(record.topic).send(record.topic, key=record.key,
                                                value=record.value, partition=record.partition)
        except MessageSizeTooLargeError as exc:
            record.future, record.refused = None, exc  # larger than max_request_size
        except KafkaError as exc:
            if not getattr(exc, "retriable", False):
                raise
            record.future = None  # not queued: flush sends it again

    def _deliver(self) -> None:
        while True:
            for index, record in enumerate(self._pending):
                if record.future is None or (record.future.is_done and record.future.failed()):
                    for later in self._pending[index:]:
                        self._send(later)
                    break
            self._client().flush(timeout=self.FLUSH_WAIT)
            if not self._replace_too_large():
                break
        for record in self._pending:
            if record.future is None:
                raise KafkaTimeoutError("the producer could not queue the record")
            record.future.get(timeout=0)  # raises the delivery's error

    def _replace_too_large(self) -> bool:
        """Put the fallback of the first record refused as too large in its place (sent again
        with all after it); False when no record was refused for its size."""
        for index, record in enumerate(self._pending):
            if not record.too_large():
                continue
            replacements = record.fallback() if record.fallback else []
            if not replacements:
                raise RecordTooLarge(
                    f"a record of {len(record.value):,} bytes is larger than topic "
                    f"{record.topic} accepts (its max.message.bytes), and nothing smaller can "
                    "stand for it")
            log.warning("a record of %d bytes is larger than topic %s accepts "
                        "(max.message.bytes): sending %d smaller record(s) in its place",
                        len(record.value), record.topic, len(replacements))
            self._pending[index:index + 1] = replacements
            # kafka-python 3.0's idempotent producer takes the broker's refusal as fatal: it
            # fails every later batch too. A new producer sends what was not acknowledged.
            producer, self._producer = self._producer, None
            if producer is not None:
                _abandon(producer)
            for later in self._pending[index:]:
                future = later.future
                if not (future is not None and future.is_done and future.succeeded()):
                    later.future = None
            return True
        return False


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
        # Never below 0: an end before the committed offset (a topic deleted and created
        # again) hides no backlog.
        return max(0, self.end - (self.committed or 0))


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
    The committed offsets are read before the end offsets: the order that can only over-count
    (see the module's docstring).
    """
    consumer = KafkaConsumer(group_id=group, enable_auto_commit=False,
                             request_timeout_ms=30_000, **client_options(settings))
    try:
        ids = consumer.partitions_for_topic(topic)
        if not ids:
            return Lag(topic, group)
        tps = [TopicPartition(topic, p) for p in sorted(ids)]
        committed = {tp: consumer.committed(tp) for tp in tps}
        ends = consumer.end_offsets(tps)
        return Lag(topic, group, [PartitionLag(tp.partition, ends[tp], committed[tp])
                                  for tp in tps])
    finally:
        consumer.close()


def admin_lag(client: KafkaAdminClient, topic: str, group: str) -> Lag:
    """:func:`group_lag` through an admin client the caller keeps open, read in the same
    order (committed offsets, then end offsets).

    The health checks read every migration's lag this way every few seconds: one client for
    them all, so no check opens a connection (nor does a TLS and SASL handshake).
    """
    partitions = sorted(p["partition_index"] for described in client.describe_topics([topic])
                        for p in described["partitions"])
    if not partitions:
        return Lag(topic, group)
    tps = [TopicPartition(topic, p) for p in partitions]
    # Committed first, ends second: the order that can only over-count (module docstring).
    committed = client.list_group_offsets({group: tps}).get(group, {})
    ends = client.list_partition_offsets({tp: OffsetSpec.LATEST for tp in tps})
    return Lag(topic, group, [PartitionLag(tp.partition, ends[tp].offset,
                                           _committed_offset(committed.get(tp)))
                              for tp in tps])


def _committed_offset(committed: Any) -> int | None:
    # The broker answers -1 for a partition the group never committed on.
    return None if committed is None or committed.offset < 0 else committed.offset
