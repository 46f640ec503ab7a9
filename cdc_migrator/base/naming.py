"""What the tool names in Kafka and MongoDB, in one place.

Every actor learns a name here (or from :class:`~cdc_migrator.base.settings.Settings`, whose
``topic``, ``dlq_topic`` and ``group`` use these functions), never from another actor.
"""

from __future__ import annotations

#: The collection ``cutover`` writes its fences to, in the migrated database. The tailer follows
#: it in the same change stream as the migrated collection.
FENCE_COLLECTION = "cdc_migrator_fences"
#: The reference map of migrations with ``depends_on`` (see capture/dependencies.py): for each
#: document of a dependency collection, the migrated documents its reference field names.
REFERENCES_COLLECTION = "cdc_migrator_references"
#: What became of every migration ever armed here (see core/history.py): kept by ``reset``.
HISTORY_COLLECTION = "cdc_migrator_history"
#: Default of the collection holding the state of each migration (``--state-collection``).
STATE_COLLECTION = "cdc_migrator_state"
#: The field that marks a document of the state collection as a shared backfill's range (or
#: its plan), naming the migration it belongs to; a migration's own document has none.
RANGE_OF = "range_of"
#: Default of the prefix of the topics the tool creates (``--topic-prefix``).
TOPIC_PREFIX = "cdc-migrator"
#: Default of the prefix of the consumer groups (``--group-prefix``).
GROUP_PREFIX = "cdc-migrator"


def topic(prefix: str, database: str, collection: str) -> str:
    """The topic of one migrated collection: every migration of it shares it."""
    return f"{prefix}.{database}.{collection}"


def dlq_topic(prefix: str, database: str, collection: str) -> str:
    """The dead-letter topic beside :func:`topic`."""
    return f"{topic(prefix, database, collection)}.dlq"


def group(prefix: str, database: str, migration: str) -> str:
    """The consumer group of one migration."""
    return f"{prefix}.{database}.{migration}"


#: Ends the name of a migration's reverse run. A Python function name cannot hold ``-``, so it
#: never clashes with a migration named after its function, and ``-`` is legal in Kafka topic
#: and group names alike.
REVERT_SUFFIX = "-revert"


def revert(migration: str) -> str:
    """The name of ``migration``'s reverse run (``revert``): its state entry, its consumer
    group (through :func:`group`), and the identity its fences carry."""
    return f"{migration}{REVERT_SUFFIX}"
