"""The ``cdc-migrator`` command line: parses, calls the Python API, prints. Nothing more.

Exit codes: 0 success, 1 refused or failed with a reason, 2 usage or configuration error.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

import click
from bson import json_util

from . import api
from .config import DEFAULT_KAFKA, DEFAULT_MONGODB_URI, Settings, mask_secrets
from .errors import CdcMigratorError, UsageError


def _settings_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Connection and naming options every command takes, from flags or environment."""
    options = [
        click.option("--mongodb-uri", envvar="MONGODB_URI", default=DEFAULT_MONGODB_URI,
                     show_default=True, metavar="URI",
                     help="MongoDB connection string; its path names the database. "
                          "[env: MONGODB_URI]"),
        click.option("--db", "database", envvar="CDC_MIGRATOR_DB", metavar="NAME",
                     help="Database, overriding the URI's path. [env: CDC_MIGRATOR_DB]"),
        click.option("--kafka", "kafka_bootstrap_servers", envvar="KAFKA_BOOTSTRAP_SERVERS",
                     default=DEFAULT_KAFKA, show_default=True, metavar="HOST:PORT[,...]",
                     help="Kafka bootstrap servers. [env: KAFKA_BOOTSTRAP_SERVERS]"),
        click.option("--transforms", envvar="CDC_MIGRATOR_TRANSFORMS", default="transforms",
                     show_default=True, type=click.Path(path_type=Path), metavar="DIR",
                     help="Directory of migration files. [env: CDC_MIGRATOR_TRANSFORMS]"),
        click.option("--state-collection", envvar="CDC_MIGRATOR_STATE_COLLECTION",
                     default="cdc_migrator_state", show_default=True, metavar="NAME",
                     help="Collection holding the state of each migration."),
        click.option("--topic-prefix", envvar="CDC_MIGRATOR_TOPIC_PREFIX",
                     default="cdc-migrator", show_default=True, metavar="PREFIX",
                     help="Topics are named PREFIX.DB.COLLECTION."),
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        settings = Settings(
            mongodb_uri=kwargs.pop("mongodb_uri"),
            database=kwargs.pop("database"),
            kafka_bootstrap_servers=kwargs.pop("kafka_bootstrap_servers"),
            transforms=kwargs.pop("transforms"),
            state_collection=kwargs.pop("state_collection"),
            topic_prefix=kwargs.pop("topic_prefix"),
        )
        try:
            return fn(settings, *args, **kwargs)
        finally:
            settings.close()

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(json.loads(json_util.dumps(value)), indent=2, sort_keys=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="cdc-migrator")
def cli() -> None:
    """Zero-downtime MongoDB document migrations, event-sourced through Kafka.

    Write a migration under ./transforms, try it with `apply NAME --dry-run`, then either
    `apply NAME` (small collections, in one process) or the pipeline (`tail`, `backfill`,
    `consume`, or all three as `run`), and finish with `verify` and `cutover`.
    """


@cli.command()
@click.argument("name")
@click.option("--batch-size", type=click.IntRange(min=1), metavar="N",
              help="Documents per batch (default: the migration's batch_size).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), metavar="DOCS/S",
              help="Cap documents read per second.")
@click.option("--dry-run", is_flag=True,
              help="Run the transform on the first batch, print each patch, write nothing.")
@click.option("--reset", is_flag=True, help="Start from the first document, not the saved position.")
@click.option("--quiet", "-q", is_flag=True, help="No progress line.")
@_settings_options
def apply(settings: Settings, name: str, batch_size: int | None, rate: float | None,
          dry_run: bool, reset: bool, quiet: bool) -> None:
    """Migrate NAME's collection in this process, without Kafka (small collections).

    Scans in _id order, writes guarded bulk updates, saves its position after every batch so
    an interrupted run resumes. Documents written by the application after the scan passed them
    are not seen: for busy collections use the pipeline.
    """
    if dry_run:
        for line in api.dry_run(settings, name, batch_size=batch_size):
            click.echo(line.describe())
        return
    report = api.apply(settings, name, batch_size=batch_size, reset=reset, rate=rate,
                       show_progress=not quiet)
    click.echo(report.summary())
    for failure in report.result.failures[:10]:
        click.echo(f"  failed {failure.id!r}: {failure.error}", err=True)
    if report.result.failed:
        sys.exit(1)


@cli.command()
@click.argument("name")
@click.option("--sample", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many ids of remaining documents to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_settings_options
def verify(settings: Settings, name: str, sample: int, as_json: bool) -> None:
    """Count the documents NAME would still change; exit 0 only when none remain.

    Runs the transform on every document without writing (streaming, so any size works), and
    checks the migration's contract schema when it names one.
    """
    report = api.verify(settings, name, sample_size=sample)
    if as_json:
        _echo_json({"migration": report.migration, "ok": report.ok, "checked": report.checked,
                    "remaining": report.remaining, "failing": report.failing,
                    "schema_violations": report.schema_violations, "sample": report.sample,
                    "failing_sample": report.failing_sample,
                    "schema_sample": report.schema_sample})
    else:
        click.echo(report.summary())
        if report.sample:
            click.echo("  sample ids: " + ", ".join(repr(i) for i in report.sample))
        for item in report.failing_sample:
            click.echo(f"  raises on {item['id']!r}: {item['error']}")
        for item in report.schema_sample:
            click.echo(f"  breaks contract schema {item['id']!r}: {item['error']}")
    if not report.ok:
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point: expected errors become one line on stderr and an exit code."""
    try:
        cli.main(args=argv, prog_name="cdc-migrator", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CdcMigratorError as exc:
        click.echo(f"cdc-migrator: {mask_secrets(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        click.echo("interrupted; progress so far is saved", err=True)
        sys.exit(130)
    except BaseException as exc:
        translated = api.translate_service_error(exc)
        if translated is None:
            raise
        click.echo(f"cdc-migrator: {mask_secrets(str(translated))}", err=True)
        sys.exit(translated.exit_code)
    sys.exit(0)


__all__ = ["cli", "main", "UsageError"]
