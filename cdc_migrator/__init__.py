"""cdc-migrator: zero-downtime MongoDB document migrations, event-sourced through Kafka.

Migration files import the contract from here::

    from cdc_migrator import migration, UNSET, DELETE
"""

from .errors import CdcMigratorError, PatchError, Refused, UsageError
from .migration import DELETE, UNSET, Migration, migration

__all__ = [
    "DELETE",
    "UNSET",
    "CdcMigratorError",
    "Migration",
    "PatchError",
    "Refused",
    "UsageError",
    "migration",
]
