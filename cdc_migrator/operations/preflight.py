"""``preflight``: before the first write, whether this deployment will carry the migration.

Each check is one function of a :class:`Probe` returning a :class:`Check`: its name, whether it
passed, what it checked, what it found and, on failure, the fix. Nothing here writes: no
database, collection, topic or state document appears (the change stream opened to probe the
topology is closed at once; a topic's creation is asked of Kafka with ``validate_only``).

``run``, ``backfill``, ``tail`` and ``cutover`` run the cheap checks they depend on at their
start (:func:`require`): no sample scan, and a service that cannot be reached is left to the
pipeline's retries rather than refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

from bson.raw_bson import RawBSONDocument
from kafka.admin import (
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePatternFilter,
)
from kafka.admin import ResourceType as KafkaResource
from kafka.errors import KafkaError, SecurityDisabledError
from pymongo.errors import OperationFailure, PyMongoError

from ..base import topics
from ..base.messages import message_of
from ..base.naming import FENCE_COLLECTION, HISTORY_COLLECTION, REFERENCES_COLLECTION
from ..base.progress import format_duration
from ..base.retry import MONGODB, Retrier
from ..base.settings import Settings
from ..base.topology import MONGOS, UNAUTHORIZED, sharded_collection, version
from ..core.events import Envelope, EventSource, Operation, encode, key_bytes, now_ms
from ..errors import CdcMigratorError, Refused, ServiceUnavailable, UsageError
from ..migration import Migration
from .cutover import load_schema
from .runway import cluster_window

log = logging.getLogger("cdc_migrator.preflight")

#: MongoDB before 6.0 is not supported (docs/compatibility.md).
OLDEST_VERSION = (6, 0)
#: A standalone mongod refuses ``$changeStream`` with this code.
CHANGE_STREAM_NEEDS_REPLICA_SET = 40573
#: Documents read by the sample scans (largest document, scan rate, fields of depends_on).
SAMPLE = 1000
#: The history window must hold the backfill's estimated time this many times over.
RUNWAY_MARGIN = 2.0
#: What a record adds around its envelope: the key, headers, the batch's own fields.
RECORD_OVERHEAD = 1024
#: Where the role that grants what the tool needs is given.
ROLE_DOC = "docs/compatibility.md (the cdcMigrator role)"


@dataclass(frozen=True)
class Check:
    """One check: its ``name``, whether it passed, what was ``checked``, the ``result`` and,
    on failure, the ``fix``."""

    name: str
    ok: bool
    checked: str
    result: str
    fix: str = ""

    def line(self) -> str:
        """The check as one line: ``ok``/``FAIL``, the name, what was checked, the result, the
        fix."""
        text = f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.checked}: {self.result}"
        return text + (f"; fix: {self.fix}" if not self.ok and self.fix else "")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "checked": self.checked,
                "result": self.result, "fix": self.fix}


@dataclass
class PreflightReport:
    """The checks of one migration, and the ones skipped by name."""

    migration: str
    checks: list[Check] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def summary(self) -> str:
        if self.ok:
            return f"{self.migration}: preflight passed ({len(self.checks)} checks" + (
                f", skipped: {', '.join(self.skipped)})" if self.skipped else ")")
        return (f"{self.migration}: preflight failed: "
                + ", ".join(c.name for c in self.failures))

    def as_dict(self) -> dict[str, Any]:
        return {"migration": self.migration, "ok": self.ok, "skipped": self.skipped,
                "checks": [c.as_dict() for c in self.checks]}


class Probe:
    """What the checks of one migration read, each once: the server's ``hello``, the
    connection's privileges, a sample of the collection."""

    def __init__(self, settings: Settings, migration: Migration, *, sample: bool = True) -> None:
        self.settings, self.migration, self.sample = settings, migration, sample

    @property
    def db_name(self) -> str:
        return self.settings.database_name

    @property
    def namespace(self) -> str:
        return f"{self.db_name}.{self.migration.collection}"

    @cached_property
    def hello(self) -> Mapping[str, Any]:
        return self.settings.client.admin.command("hello")

    @cached_property
    def sampled(self) -> list[RawBSONDocument]:
        """Up to :data:`SAMPLE` documents of the collection, chosen at random, as raw BSON."""
        coll = self.settings.db.get_collection(self.migration.collection).with_options(
            codec_options=self.settings.db.codec_options.with_options(
                document_class=RawBSONDocument))
        return list(coll.aggregate([{"$sample": {"size": SAMPLE}}]))


# --------------------------------------------------------------------------- MongoDB


def check_topology(probe: Probe) -> Check:
    """Version; a standalone is refused (no change streams); a replica set; a sharded cluster
    with the collection's shard key."""
    name, checked = "mongo-topology", "MongoDB version and deployment"
    found = version(probe.settings.client)
    shown = ".".join(str(p) for p in found)
    if not version_supported(found):
        return Check(name, False, checked, f"MongoDB {shown}",
                     "MongoDB 6.0 or later (docs/compatibility.md)")
    if probe.hello.get("msg") == MONGOS:
        return Check(name, True, checked, f"MongoDB {shown}, sharded cluster (mongos); "
                     + _shard_key(probe))
    try:
        with probe.settings.db.watch(max_await_time_ms=1):
            pass
    except OperationFailure as exc:
        if exc.code == CHANGE_STREAM_NEEDS_REPLICA_SET:
            return Check(name, False, checked, f"MongoDB {shown}, standalone: change streams "
                         f"refused ({message_of(exc, 120)})",
                         "run mongod as a replica set (a one-member set will do: --replSet, "
                         "then rs.initiate()) or through a sharded cluster's mongos")
        if exc.code != UNAUTHORIZED:
            raise
        # A missing privilege is the privileges check's to name; the deployment is hello's.
        set_name = probe.hello.get("setName")
        where = f"replica set {set_name!r}" if set_name else "hello names no replica set"
        return Check(name, True, checked, f"MongoDB {shown}, {where} (no change stream "
                     "tried: the user may not open one)")
    set_name = probe.hello.get("setName")
    where = f"replica set {set_name!r}" if set_name else "change streams open (hello names " \
        "no replica set)"
    return Check(name, True, checked, f"MongoDB {shown}, {where}")


def version_supported(found: tuple[int, ...]) -> bool:
    """Whether the tool supports MongoDB ``found`` (:data:`OLDEST_VERSION` on)."""
    return found[:2] >= OLDEST_VERSION


def _shard_key(probe: Probe) -> str:
    try:
        sharded = sharded_collection(probe.settings.client, probe.namespace)
    except OperationFailure as exc:
        return (f"the shard key of {probe.namespace} cannot be read ({message_of(exc, 120)}): "
                "guarded writes will pin _id alone and reach every shard; grant clusterMonitor")
    if sharded is None:
        return f"{probe.namespace} is not sharded"
    return f"{probe.namespace} sharded on {dict(sharded.key)}: guarded writes pin it"


@dataclass(frozen=True)
class Need:
    """A privilege the migration needs: ``actions`` on a resource (``collection`` "" is every
    collection of ``db``; ``db`` None is the cluster), and why."""

    db: str | None
    collection: str
    actions: tuple[str, ...]
    why: str

    def resource(self) -> str:
        if self.db is None:
            return "the cluster"
        return f"{self.db}.{self.collection}" if self.collection else f"database {self.db}"


def needs(settings: Settings, migration: Migration) -> list[Need]:
    """Every privilege the migration's commands need (docs/compatibility.md)."""
    db, coll = settings.database_name, migration.collection
    crud = ("find", "insert", "update", "remove")
    found = [Need(db, "", ("changeStream", "find"), "the change stream on the database"),
             Need(db, "", ("listCollections",), "the collection's existence"),
             Need(db, coll, crud, "the scan and the guarded writes")]
    own = [settings.state_collection, FENCE_COLLECTION, HISTORY_COLLECTION]
    if migration.depends_on:
        own.append(REFERENCES_COLLECTION)
    found += [Need(db, name, crud, "the tool's own collection") for name in own]
    if migration.contract_schema:
        found.append(Need(db, coll, ("collMod",), "cutover's contract schema"))
    if settings.max_replication_lag is not None and settings.on_lag_unknown == "fail":
        found.append(Need(None, "", ("replSetGetStatus", "replSetGetConfig"),
                          "--max-replication-lag"))
    found += [Need(db, other, ("find",), "depends_on") for other in migration.depends_on]
    return found


def allows(privileges: Iterable[Mapping[str, Any]], need: Need, action: str) -> bool:
    """Whether ``privileges`` (``connectionStatus``'s) grant ``action`` on ``need`` 's resource,
    as MongoDB matches resources: ``collection`` "" in a privilege is every collection of its
    database (not ``system.``), ``db`` "" every database."""
    for privilege in privileges:
        resource = privilege.get("resource") or {}
        if action not in (privilege.get("actions") or ()):
            continue
        if resource.get("anyResource"):
            return True
        if need.db is None:
            if resource.get("cluster"):
                return True
            continue
        if resource.get("db") not in ("", need.db) or "collection" not in resource:
            continue
        granted = resource["collection"]
        if granted == need.collection or (
                granted == "" and not need.collection.startswith("system.")):
            return True
    return False


def check_privileges(probe: Probe) -> Check:
    """Each privilege the migration needs, from ``connectionStatus`` with ``showPrivileges``."""
    name, checked = "privileges", "connectionStatus showPrivileges"
    info = probe.settings.client.admin.command("connectionStatus", showPrivileges=True)
    auth = info.get("authInfo") or {}
    if not auth.get("authenticatedUsers"):
        try:
            probe.settings.db.list_collection_names()
        except OperationFailure as exc:
            if exc.code != UNAUTHORIZED:
                raise
            return Check(name, False, checked, "no user logged in, and the server has access "
                         "control on", "give the user's credentials in the MongoDB URI "
                         "(CDC_MIGRATOR_MONGODB_URI)")
        return Check(name, True, checked, "no user logged in and access control off: every "
                     "command is allowed")
    privileges = auth.get("authenticatedUserPrivileges") or []
    missing = [f"{action} on {need.resource()} ({need.why})"
               for need in needs(probe.settings, probe.migration)
               for action in need.actions if not allows(privileges, need, action)]
    users = ", ".join(f"{u.get('user')}@{u.get('db')}" for u in auth["authenticatedUsers"])
    if missing:
        return Check(name, False, checked, f"{users} lacks " + "; ".join(missing),
                     f"grant the user a role with these privileges, e.g. {ROLE_DOC}")
    return Check(name, True, checked, f"{users} holds every privilege the migration needs")


def check_pre_images(probe: Probe) -> Check:
    """Whether the ``depends_on`` collections keep change-stream pre-images, and the fallback
    where they do not."""
    name, checked = "pre-images", "changeStreamPreAndPostImages of the depends_on collections"
    if not probe.migration.depends_on:
        return Check(name, True, checked, "no depends_on: none needed")
    options = {info.get("name"): info.get("options") or {}
               for info in probe.settings.db.list_collections()}
    missing = [c for c in probe.migration.depends_on if c not in options]
    if missing:
        return Check(name, False, checked, "depends_on collections missing: "
                     + ", ".join(missing), "check the migration's depends_on names")
    on = [c for c in probe.migration.depends_on
          if (options[c].get("changeStreamPreAndPostImages") or {}).get("enabled")]
    off = [c for c in probe.migration.depends_on if c not in on]
    if not off:
        return Check(name, True, checked, "on for " + ", ".join(on))
    return Check(name, True, checked, f"off for {', '.join(off)}: a change there is traced "
                 "through the reference map instead (the tool keeps it either way); to read "
                 "pre-images: db.runCommand({collMod: NAME, changeStreamPreAndPostImages: "
                 "{enabled: true}})" + (f"; on for {', '.join(on)}" if on else ""))


def check_runway(probe: Probe) -> Check:
    """The change history's window against the backfill's estimated time (documents over the
    rate of a short sample scan), with :data:`RUNWAY_MARGIN`."""
    name, checked = "runway", "change history window against the backfill's estimated time"
    settings = probe.settings
    window, unknown = cluster_window(settings.client, settings.client_for)
    if window is None:
        return Check(name, False, checked, f"the window cannot be read: {unknown}",
                     "grant read on local.oplog.rs (clusterMonitor), or --skip-check runway "
                     "if you know the oplog holds the backfill")
    coll = settings.db[probe.migration.collection]
    count = coll.estimated_document_count()
    started = time.monotonic()
    scanned = sum(1 for _ in coll.find({}, sort=[("_id", 1)], limit=SAMPLE, batch_size=SAMPLE))
    rate = scanned / max(time.monotonic() - started, 1e-3)
    eta = count / rate if scanned else 0.0
    result = (f"window {format_duration(window.seconds)}, backfill of {count:,} documents at "
              f"~{rate:,.0f}/s (measured on {scanned:,}) about {format_duration(eta)}")
    if not runway_verdict(window.seconds, count, rate if scanned else 0.0):
        return Check(name, False, checked, f"{result}: less than {RUNWAY_MARGIN:g} times it",
                     "give the server a larger oplog (replSetResizeOplog), or keep the tailer "
                     "running throughout the backfill and --skip-check runway")
    return Check(name, True, checked, f"{result}: margin {window.seconds / max(eta, 1e-3):,.0f}x")


#: The oplog's timestamps count whole seconds.
OPLOG_RESOLUTION = 1.0


def runway_verdict(window: float, count: int, rate: float) -> bool:
    """Whether a history ``window`` (seconds) holds :data:`RUNWAY_MARGIN` times the backfill
    of ``count`` documents at ``rate`` per second (nothing to scan: it does).

    The oplog's timestamps count whole seconds, so a window read as 0 s (a new deployment's,
    whose history began this second) holds up to a second: a runway needed shorter than that
    second is not judged against it (a 30-document backfill of 3 ms was refused)."""
    eta = count / rate if rate > 0 else 0.0
    needed = RUNWAY_MARGIN * eta
    return window >= needed or needed < OPLOG_RESOLUTION


# --------------------------------------------------------------------------- Kafka


def check_kafka(probe: Probe) -> Check:
    """The broker is reachable and the credentials work; the topic exists with settings that
    keep every event and a record limit above the largest document (sampled), or may be
    created; the ACLs where the broker has an authorizer."""
    name, checked = "kafka", "broker, topic, record limit and ACLs"
    settings = probe.settings
    topic = settings.topic(probe.migration.collection)
    client = topics.admin(settings)
    try:
        found = [f"reached {settings.kafka_bootstrap_servers}"]
        if topic in client.list_topics():
            problems, limit = _topic_problems(client, settings, topic)
            found.append(f"topic {topic} exists")
        else:
            problems, limit = _creation_problems(client, settings, topic)
            found.append(f"topic {topic} may be created")
        if probe.sample and limit is not None:
            problems += _size_problems(probe, settings, topic, limit)
        acl, acl_problems = _acl_problems(client, settings, topic,
                                          settings.group(probe.migration.name))
        found.append(acl)
        problems += acl_problems
    finally:
        client.close()
    if problems:
        return Check(name, False, checked, "; ".join(found + [p for p, _ in problems]),
                     "; ".join(f for _, f in problems))
    return Check(name, True, checked, "; ".join(found))


Problem = tuple[str, str]  # what is wrong, its fix


def _topic_problems(client: Any, settings: Settings, topic: str
                    ) -> tuple[list[Problem], int | None]:
    """A pre-created topic's retention, compaction and ``max.message.bytes``; the limit."""
    try:
        topics.check_topic_configs(client, settings, topic)
    except Refused as exc:
        reason, _, fix = str(exc).partition(". Fix: ")
        return [(reason, fix or "see docs/deploy.md")], None
    values = topics.read_topic_configs(client, topic, ["max.message.bytes"])
    limit = values.get("max.message.bytes")
    return [], int(limit) if limit is not None else None


def _creation_problems(client: Any, settings: Settings, topic: str
                       ) -> tuple[list[Problem], int | None]:
    """Whether the cluster would create the topic as the tool does (validate_only), and its
    record limit. As ``topics.create_topic`` does, a cluster that caps ``max.message.bytes``
    gets a topic with its default when no ``--max-record-bytes`` was given (the limit is then
    the cluster's, unknown here)."""
    configs = topics.topic_configs(settings)
    message = _validate_creation(client, settings, topic, configs)
    if message and settings.max_record_bytes is None and "max.message.bytes" in message:
        log.warning("preflight: Kafka caps max.message.bytes (%s): the topic would be created "
                    "with the cluster's default; larger documents travel by key only", message)
        configs.pop("max.message.bytes")
        if not _validate_creation(client, settings, topic, configs):
            return [], None
    if not message:
        return [], topics.record_limit(settings)
    return [(f"Kafka would refuse to create topic {topic}: {message}",
             "let the user create topics (CREATE on the cluster or the topic), or create it "
             "with the settings of docs/deploy.md")], None


def _validate_creation(client: Any, settings: Settings, topic: str,
                       configs: dict[str, str]) -> str | None:
    """Kafka's answer to creating ``topic`` with ``configs``, validated only: None when it
    would create it, else its reason."""
    answer = client.create_topics({topic: {"num_partitions": settings.partitions,
                                           "replication_factor": -1, "configs": configs}},
                                  validate_only=True, raise_errors=False)
    (result,) = answer["topics"]
    if not result["error_code"]:
        return None
    return str(result["error_message"] or f"error {result['error_code']}")


def _size_problems(probe: Probe, settings: Settings, topic: str, limit: int) -> list[Problem]:
    """The largest sampled document in its envelope against the topic's record limit."""
    if not probe.sampled:
        return []
    largest = max(probe.sampled, key=lambda d: len(d.raw))
    size = record_size(probe.migration.name, probe.db_name, probe.migration.collection, largest)
    if size <= limit:
        return []
    return [(f"the largest sampled document ({len(largest.raw):,} bytes, {size:,} as a record) "
             f"is more than max.message.bytes={limit:,}: it would travel by key only",
             topics.fix_command(settings, topic, f"max.message.bytes={size}"))]


def record_size(migration: str, database: str, collection: str,
                document: RawBSONDocument) -> int:
    """The bytes of the record a change event carrying ``document`` makes: its envelope, its
    key, and :data:`RECORD_OVERHEAD`."""
    envelope = Envelope(migration=migration, source=EventSource.CHANGE,
                        operation=Operation.REPLACE, database=database, collection=collection,
                        key=document["_id"],
                        document=cast(dict[str, Any], document),  # encoded as its raw bytes
                        cluster_time=None,
                        resume_token={"_data": "8" * 256}, emitted_at=now_ms(), fence_id=None)
    return len(encode(envelope)) + len(key_bytes(document["_id"])) + RECORD_OVERHEAD


def _acl_problems(client: Any, settings: Settings, topic: str, group: str
                  ) -> tuple[str, list[Problem]]:
    """Write on the topic, read and describe on the group, where the broker reports ACLs."""
    try:
        bindings = []
        for kind, name in ((KafkaResource.TOPIC, topic), (KafkaResource.GROUP, group)):
            found, error = client.describe_acls(ACLFilter(
                principal=None, host="*", operation=ACLOperation.ANY,
                permission_type=ACLPermissionType.ANY,
                resource_pattern=ResourcePatternFilter(kind, name,
                                                       ACLResourcePatternType.MATCH)))
            if error is not None and error.errno:
                raise error
            bindings += found
    except SecurityDisabledError:
        return "ACLs: the broker has no authorizer (every client may write and read)", []
    except KafkaError as exc:
        return f"ACLs: cannot be described ({message_of(exc, 120)})", []
    principal = f"User:{settings.kafka_sasl_username}" if settings.kafka_sasl_username else None
    missing = missing_acls(bindings, principal, topic, group)
    if not missing:
        return f"ACLs: {principal or 'this client'} may write {topic} and read group {group}", []
    return "ACLs described", [(f"no ACL allows {principal or 'this client'} {m}",
                               "kafka-acls.sh --add --allow-principal PRINCIPAL " + m)
                              for m in missing]


#: What the tool does on each resource: operations, any of which (or ALL) allows it.
_ACL_NEEDS = ((KafkaResource.TOPIC, "WRITE"), (KafkaResource.TOPIC, "READ"),
              (KafkaResource.GROUP, "READ"), (KafkaResource.GROUP, "DESCRIBE"))


def missing_acls(bindings: Iterable[Any], principal: str | None, topic: str,
                 group: str) -> list[str]:
    """The operations no ALLOW binding of ``principal`` (or ``User:*``; any principal when it
    is unknown) grants, as ``--operation OP --topic T``/``--group G``; a DENY wins."""
    missing = []
    for kind, operation in _ACL_NEEDS:
        def applies(binding: Any, kind: Any = kind, op: str = operation) -> bool:
            return (binding.resource_pattern.resource_type == kind
                    and binding.operation.name in (op, "ALL")
                    and (principal is None or binding.principal in (principal, "User:*")))
        relevant = [b for b in bindings if applies(b)]
        if any(b.permission_type.name == "DENY" for b in relevant) or \
                not any(b.permission_type.name == "ALLOW" for b in relevant):
            target = f"--topic {topic}" if kind == KafkaResource.TOPIC else f"--group {group}"
            missing.append(f"--operation {operation.capitalize()} {target}")
    return missing


# --------------------------------------------------------------------------- the migration


def check_schema(probe: Probe) -> Check:
    """The contract schema against MongoDB's ``$jsonSchema`` dialect."""
    name, checked = "schema", "the contract schema against MongoDB's $jsonSchema dialect"
    if not probe.migration.contract_schema:
        return Check(name, True, checked, "no contract schema")
    try:
        schema = load_schema(probe.settings, probe.migration.contract_schema)
    except UsageError as exc:
        return Check(name, False, checked, str(exc), "write the schema in MongoDB's dialect "
                     "(no $ref, $schema, default, definitions, format, id; bsonType "
                     "\"int\"/\"long\" for integers)")
    return Check(name, True, checked, f"{probe.migration.contract_schema} is accepted "
                 f"({len(schema.get('properties') or {})} properties)")


def check_transform(probe: Probe) -> Check:
    """The transform loaded (it did, or there would be no probe), and each ``depends_on``
    field is held by some sampled document of the other collection."""
    name, checked = "transform", "the transform's file and its depends_on fields"
    fields = {c: d.field for c, d in probe.migration.depends_on.items() if d.field}
    absent = []
    for collection, field_name in fields.items():
        held = probe.settings.db[collection].aggregate([
            {"$sample": {"size": SAMPLE}}, {"$match": {field_name: {"$exists": True}}},
            {"$limit": 1}])
        if next(iter(held), None) is None:
            absent.append(f"{collection}.{field_name}")
    if absent:
        return Check(name, False, checked, "loaded; no sampled document has "
                     + ", ".join(absent), "check the field names of depends_on")
    return Check(name, True, checked, "loaded" + (
        f"; depends_on fields found: {', '.join(f'{c}.{f}' for c, f in fields.items())}"
        if fields else ""))


def load_failure(error: Exception) -> Check:
    """The transform check of a migration whose files do not load."""
    return Check("transform", False, "the transform's file", f"does not load: {error}",
                 "fix the file, then `cdc-migrator apply NAME --dry-run`")


CheckFunction = Callable[[Probe], Check]
#: Every check by name, in the order they run.
CHECKS: dict[str, CheckFunction] = {
    "mongo-topology": check_topology, "privileges": check_privileges,
    "pre-images": check_pre_images, "runway": check_runway, "kafka": check_kafka,
    "schema": check_schema, "transform": check_transform}
#: The checks a command runs at its start: cheap ones (no sample scan). The topic's settings
#: are not among them: each command checks its topic as it opens it (``topics.ensure_topic``:
#: the same reading, and the record limit's fallback on a capped cluster).
AT_START: dict[str, tuple[str, ...]] = {
    "run": ("mongo-topology", "privileges", "schema"),
    "backfill": ("mongo-topology", "privileges"),
    "tail": ("mongo-topology", "privileges"),
    "cutover": ("privileges", "schema")}


def check_names(skip: Iterable[str]) -> list[str]:
    """The names of ``skip``, each one a check's (a UsageError otherwise)."""
    names = list(skip)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise UsageError(f"--skip-check {unknown[0]!r} is no check: one of "
                         + ", ".join(CHECKS))
    return names


def preflight(settings: Settings, migration: Migration, *,
              skip: Iterable[str] = ()) -> PreflightReport:
    """Run every check but those of ``skip``, logging each skip."""
    skipped = check_names(skip)
    report = PreflightReport(migration.name)
    probe = Probe(settings, migration)
    for name in CHECKS:
        if name in skipped:
            log.warning("preflight: check %s skipped (--skip-check)", name)
            report.skipped.append(name)
            continue
        report.checks.append(_run(name, probe))
    return report


def _run(name: str, probe: Probe) -> Check:
    """One check; a service that fails it (unreachable, refused login) is its result."""
    try:
        return CHECKS[name](probe)
    except KafkaError as exc:
        return Check(name, False, "Kafka", f"{type(exc).__name__}: {message_of(exc, 200)}",
                     "check CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS and the Kafka credentials and "
                     "TLS settings")
    except PyMongoError as exc:
        return Check(name, False, "MongoDB", f"{type(exc).__name__}: {message_of(exc, 200)}",
                     "check CDC_MIGRATOR_MONGODB_URI: the server, the credentials, the user's "
                     "roles")


def require(settings: Settings, migration: Migration, command: str,
            skip: Iterable[str] = ()) -> None:
    """The checks ``command`` depends on, at its start; Refused with their lines when one
    fails. A MongoDB out of reach is retried as the command's own steps are, within the same
    ``--retry-deadline`` counted from the first failed attempt (then ServiceUnavailable); a
    check that cannot run for another reason is left to the command."""
    report = PreflightReport(migration.name)
    probe = Probe(settings, migration, sample=False)
    skipped = check_names(skip)
    retry = Retrier(settings, log)
    for name in AT_START[command]:
        if name in skipped:
            log.warning("preflight: check %s skipped (--skip-check)", name)
            continue
        try:
            report.checks.append(retry.call(MONGODB, CHECKS[name], probe))
        except (PyMongoError, KafkaError) as exc:  # not an outage: refused, say
            log.debug("preflight: check %s not run at start: %s", name, message_of(exc))
        except CdcMigratorError as exc:
            if isinstance(exc, ServiceUnavailable):
                raise
            log.debug("preflight: check %s not run at start: %s", name, message_of(exc))
    if not report.ok:
        failed = " | ".join(c.line() for c in report.failures)
        if any(c.name == "schema" for c in report.failures):  # a file to fix: configuration
            raise UsageError(f"{command} refused by preflight: {failed}")
        raise Refused(f"{command} refused by preflight: {failed}")
