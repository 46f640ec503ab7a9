"""The ``cdc-migrator`` command line: parses, calls the Python API, prints. Nothing more.

Every setting's option (flag, environment variable, default from the configuration file) is
derived from the settings table (``base/settings.py``), which also says which commands take a
setting; the options of a command alone are declared once below and shared by the commands
that take them. A command's help is the docstring of its function in ``api.py`` (up to the
paragraph for Python callers), so the two never say different things.

Exit codes, one rule for every command (README.md's table): 0 done, or stopped as asked
(SIGTERM or SIGINT to a long-running command, which finishes its batch); 1 refused or failed
with a reason, at any point of the work (a check, a service, a transform's return value);
2 what the command was given cannot be used, found before any work (a flag, a variable, the
file, a name, a migration file that does not load); 130 interrupted (Ctrl-C where the command
does not stop gracefully, or at a prompt): 128 + SIGINT, as shells report it.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import click
from bson import json_util

from . import api, configfile
from .base import collector, logs
from .base.checks import OPTIONS, Setting, Source, deprecated, take_deprecations
from .base.messages import shorten
from .base.settings import Settings
from .core.rawdoc import implementation
from .errors import CdcMigratorError, Refused, UsageError
from .operations import observability
from .operations.history import render as render_history
from .operations.preflight import CHECKS
from .operations.status import render

log = logging.getLogger("cdc_migrator.cli")

_CONFIG = "cdc_migrator.config"
_SOURCES = "cdc_migrator.sources"
# The values given by a deprecated flag: (setting or option name) -> (that flag, its value).
_OLD_FLAGS = "cdc_migrator.old_flags"
# The component named in the log lines of a command's main thread.
_COMPONENT_OF_COMMAND = {"tail": "tailer", "consume": "consumer", "backfill": "backfill",
                         "apply": "apply", "cutover": "cutover"}
_Command = Callable[..., Any]


def _read_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Eager: read the file before the other options, which take their defaults from it."""
    config = configfile.load(configfile.find(value))
    ctx.meta[_CONFIG] = config
    ctx.default_map = {**(ctx.default_map or {}), **config.defaults}


def _option(spec: Setting) -> Callable[[_Command], _Command]:
    """The click option of one setting of the table, and its deprecated flags. Click passes
    the value on as given; the table checks it (``Settings.from_values`` with the sources of
    :func:`_sourced`), so that a refusal is one line naming where the value came from."""
    shown = f" [{spec.allowed()}]" if spec.choices or spec.kind in (int, float) else ""
    help_text = spec.help + shown + (f" [env: {spec.env_name}]" if spec.env_name else "")
    metavar = "[" + "|".join(spec.choices) + "]" if spec.choices else spec.metavar
    # A flag's variable is read by the table too (click would refuse "maybe" in its words).
    # Click reads the first variable set of the list: the new name, then the deprecated ones.
    extra: dict[str, Any] = {"is_flag": True, "envvar": None} if spec.kind is bool else \
        {"type": click.UNPROCESSED,
         "envvar": [spec.env_name, *spec.old_env] if spec.env_name else None}
    # A duration's default is given, and shown, with its unit; the table reads it back.
    default = spec.text(spec.default) if spec.unit and spec.default is not None else \
        spec.default
    options: list[Callable[[_Command], _Command]] = [click.option(
        spec.flag_name, spec.name, default=default,
        show_default=spec.default is not None and spec.kind is not bool, metavar=metavar,
        help=help_text, **extra)]
    options += [_old_flag(old, spec.name, spec.flag_name) for old in spec.old_flags]
    return lambda fn: functools.reduce(lambda f, option: option(f), reversed(options), fn)


def _old_flag(old: str, name: str, new: str) -> Callable[[_Command], _Command]:
    """A deprecated flag of ``name``: hidden, noted with a warning, its value kept for the
    option ``new`` (which checks it, and wins when both are given)."""
    def keep(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            deprecated(f"flag {old} is deprecated: use {new}")
            ctx.meta.setdefault(_OLD_FLAGS, {})[name] = (old, value)

    return click.option(old, f"{name}__{old.strip('-').replace('-', '_')}", hidden=True,
                        type=click.UNPROCESSED, expose_value=False, callback=keep)


_SOURCE_KINDS = {click.core.ParameterSource.COMMANDLINE: "flag",
                 click.core.ParameterSource.ENVIRONMENT: "env",
                 click.core.ParameterSource.DEFAULT_MAP: "file"}


def _sourced(ctx: click.Context, values: dict[str, Any]) -> dict[str, Source]:
    """Where each value came from (kept for ``config show``). The variable of a flag (click
    reads none for it) is taken here, when no flag was given; so is a deprecated flag's
    value."""
    table = Settings.table()
    old_flags = ctx.meta.get(_OLD_FLAGS, {})
    sources = {}
    for name in values:
        spec, source = table[name], _source(ctx, table[name])
        if spec.kind is bool and spec.env_name and source.kind != "flag" \
                and os.environ.get(spec.env_name):
            values[name], source = os.environ[spec.env_name], Source("env", spec.env_name)
        if name in old_flags and source.kind != "flag":
            flag, values[name] = old_flags[name]
            source = Source("flag", flag)
        sources[name] = source
    ctx.meta[_SOURCES] = sources
    return sources


def _source(ctx: click.Context, spec: Setting) -> Source:
    """Where click took the value of ``spec`` from."""
    kind = _SOURCE_KINDS.get(ctx.get_parameter_source(spec.name))  # type: ignore[arg-type]
    if kind == "flag":
        return Source("flag", spec.flag_name)
    if kind == "env":
        if os.environ.get(spec.env_name or ""):
            return Source("env", spec.env_name or spec.name)
        old = next(name for name in spec.old_env if os.environ.get(name))
        deprecated(f"environment variable {old} is deprecated: use {spec.env_name}")
        return Source("env", old)
    if kind == "file":
        config = ctx.meta.get(_CONFIG)
        return Source("file", spec.key_name or spec.name, str(config.path if config else ""))
    return Source("default", spec.name)


def _command_option(flag: str, spec: Setting, help_text: str, *, default: Any = None,
                    source: str = "flag", old: tuple[str, ...] = ()
                    ) -> Callable[[_Command], _Command]:
    """The option of a single command, checked by its spec in ``OPTIONS`` (one line naming
    the flag and what is allowed); ``source`` "throttle" for ``throttle --rate``; ``old`` its
    deprecated spellings (the new one wins when both are given)."""
    name = flag.removeprefix("--").replace("-", "_")  # the command's parameter

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or ctx.get_parameter_source(name) is \
                click.core.ParameterSource.DEFAULT:
            # Click handles the options given before those left to their default.
            given = ctx.meta.get(_OLD_FLAGS, {}).get(name)
            if given is not None:
                return spec.check(given[1], Source(source, given[0]))  # type: ignore[arg-type]
            return value if value is None or not spec.unit else \
                spec.check(value, Source("default", flag))
        return spec.check(value, Source(source, flag))  # type: ignore[arg-type]

    options: list[Callable[[_Command], _Command]] = [click.option(
        flag, name, type=click.UNPROCESSED,
        default=spec.text(default) if spec.unit and default is not None else default,
        callback=check, show_default=default is not None, metavar=spec.metavar,
        help=f"{help_text} [{spec.allowed()}]")]
    options += [_old_flag(spelling, name, flag) for spelling in old]
    return lambda fn: functools.reduce(lambda f, option: option(f), reversed(options), fn)


#: Where a command's help ends in its API function's docstring: what follows is for Python.
_PYTHON_ONLY = "In Python:"


def _help(fn: Callable[..., Any]) -> str:
    """A command's help: the docstring of its API function, without the Python paragraph."""
    return (inspect.getdoc(fn) or "").split(f"\n\n{_PYTHON_ONLY}")[0]


def _command_name(fn: _Command) -> str:
    """The command a function implements: ``config_show`` is ``config show``, ``next_``
    ``next`` (as the settings table names commands)."""
    return fn.__name__.rstrip("_").replace("_", " ")


def _settings_options(fn: _Command) -> _Command:
    """The options of the settings the command takes (the table says which), with the
    configuration file and logging; the command receives the Settings (the table's values)
    as its first argument."""
    takes_quiet = "quiet" in inspect.signature(fn).parameters  # its own -q: shared meaning
    command = _command_name(fn)
    table = Settings.table()
    options = [_option(spec) for spec in table.values() if spec.commands
               and command in spec.commands]
    options += [_option(spec) for spec in table.values() if spec.commands is None]
    options += [
        click.option("--config", envvar="CDC_MIGRATOR_CONFIG", metavar="FILE", is_eager=True,
                     expose_value=False, callback=_read_config,
                     help=f"TOML configuration file (default: ./{configfile.DEFAULT_PATH} if "
                          "it exists); flags and environment override it. "
                          "[env: CDC_MIGRATOR_CONFIG]"),
        click.option("--verbose", "-v", count=True,
                     help="Debug logging (-vv: the Kafka and MongoDB drivers' too)."),
    ]
    if not takes_quiet:
        options.append(click.option("--quiet", "-q", is_flag=True,
                                    help="Log only warnings and errors."))

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        config = configfile.with_environment(ctx.meta.get(_CONFIG) or configfile.ConfigFile(),
                                             os.environ)
        ctx.meta[_CONFIG] = config
        quiet = kwargs["quiet"] if takes_quiet else kwargs.pop("quiet")
        verbose = kwargs.pop("verbose")
        values = {name: kwargs.pop(name) for name in list(kwargs) if name in table}
        settings = Settings.from_values(values, _sourced(ctx, values),
                                        kafka_options=config.kafka, mongo_options=config.mongo)
        logs.configure(settings.log_format, verbose or (-1 if quiet else 0))
        for message in take_deprecations():  # old scripts must not break silently
            log.warning(message)
        logs.add_secrets(*settings.secrets())
        if ctx.info_name != "show":  # `config show` prints the settings, whatever they are
            settings.check_kafka_client()
        names: tuple[str, ...] = kwargs.get("names") or (
            (kwargs["name"],) if kwargs.get("name") else ())
        logs.bind(migration=names[0] if len(names) == 1 else None,
                  component=_COMPONENT_OF_COMMAND.get(ctx.info_name or ""))
        try:
            return fn(settings, *args, **kwargs)
        finally:
            settings.close()

    decorated: _Command = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


# The options of commands, each declared once, each checked by its spec in OPTIONS.
_BATCH_SIZE = _command_option("--batch-size", OPTIONS["batch_size"],
                              "Documents per batch (default: the migration's batch_size).")
_RATE = _command_option("--rate", OPTIONS["rate"],
                        "Cap documents read per second, to spare a production database.")
_RESET = click.option("--reset", is_flag=True,
                      help="Start from the first document, not the saved position.")
_PROGRESS_QUIET = click.option("--quiet", "-q", is_flag=True,
                               help="No progress line; log only warnings and errors.")
_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output (JSON).")
_SKIP_CHECK = click.option("--skip-check", "skip_checks", multiple=True, metavar="NAME",
                           help="Skip this preflight check (repeatable; logged): "
                                + ", ".join(CHECKS) + ".")


def _timeout(default: float | None, text: str) -> Callable[[_Command], _Command]:
    return _command_option("--timeout", OPTIONS["timeout"], text, default=default)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(json.loads(json_util.dumps(value)), indent=2, sort_keys=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="cdc-migrator",
                      message=f"%(prog)s, version %(version)s (raw BSON: {implementation()})")
def cli() -> None:
    """Zero-downtime MongoDB document migrations, event-sourced through Kafka.

    Write a migration under ./transforms, try it with `apply NAME --dry-run`, then either
    `apply NAME` (small collections, in one process) or the pipeline (`tail`, `backfill`,
    `consume`, or all three as `run`), and finish with `verify` and `cutover`.
    """


@cli.command(help=_help(api.apply))
@click.argument("name")
@_BATCH_SIZE
@_RATE
@click.option("--dry-run", is_flag=True,
              help="Run the transform on the first batch, print each patch, write nothing.")
@_RESET
@_PROGRESS_QUIET
@_settings_options
def apply(settings: Settings, name: str, batch_size: int | None, rate: float | None,
          dry_run: bool, reset: bool, quiet: bool) -> None:
    if dry_run:
        for line in api.dry_run(settings, name, batch_size=batch_size):
            click.echo(line.describe())
        return
    with collector.tuned():  # a long-running command: the collector set for it
        report = api.apply(settings, name, batch_size=batch_size, reset=reset, rate=rate,
                           show_progress=not quiet)
    click.echo(report.summary())
    for failure in report.result.failures[:10]:
        click.echo(f"  failed {failure.id!r}: {failure.error}", err=True)
    if report.result.failed:
        sys.exit(1)


@cli.command(help=_help(api.census))
@click.argument("name")
@_command_option("--per-shape", OPTIONS["sample"], "Documents of each shape the transform is "
                 "tried on.", default=5, old=("--sample",))
@_command_option("--max-shapes", OPTIONS["max_shapes"], "Distinct shapes tracked at most "
                 "(memory stays bounded); documents of further shapes are counted, not tried, "
                 "and census fails.", default=1000)
@_BATCH_SIZE
@_JSON
@_settings_options
def census(settings: Settings, name: str, per_shape: int, max_shapes: int,
           batch_size: int | None, as_json: bool) -> None:
    report = api.census(settings, name, sample=per_shape, max_shapes=max_shapes,
                        batch_size=batch_size)
    if as_json:
        _echo_json(report.as_dict())
    else:
        click.echo(report.summary())
        for shape in report.shapes:
            back = "" if shape.reversible is None else \
                ("; reversible" if shape.reversible else "; NOT reversible")
            click.echo(f"  {shape.id} {shape.count:>10,}  {shape.verdict}{back}  {shape.shape}")
            if shape.problem:
                click.echo(f"      e.g. _id {shape.problem_id!r}: {shape.problem}")
            for write in shape.side_writes:
                click.echo(f"      would write: {shorten(write, 100)}")
            if shape.irreversible:
                click.echo(f"      does not come back, e.g. _id {shape.irreversible_id!r}: "
                           f"{shape.irreversible}")
    if not report.ok:
        sys.exit(1)


@cli.command(help=_help(api.verify))
@click.argument("name")
@_command_option("--show-ids", OPTIONS["sample_ids"],
                 "How many ids of remaining documents to show.", default=10, old=("--sample",))
@click.option("--reversible", is_flag=True,
              help="Instead: check that the migration then its inverse gives back every "
                   "sampled document (byte-identical BSON, top-level field order aside).")
@_command_option("--per-shape", OPTIONS["per_shape"],
                 "With --reversible: documents checked of each shape.", default=3)
@_JSON
@_settings_options
def verify(settings: Settings, name: str, show_ids: int, reversible: bool, per_shape: int,
           as_json: bool) -> None:
    if reversible:
        _verify_reversible(settings, name, per_shape, as_json)
        return
    report = api.verify(settings, name, sample_size=show_ids)
    if as_json:
        _echo_json({"migration": report.migration, "ok": report.ok, "checked": report.checked,
                    "remaining": report.remaining, "failing": report.failing,
                    "schema_violations": report.schema_violations, "sample": report.sample,
                    "failing_sample": report.failing_sample,
                    "schema_sample": report.schema_sample,
                    "code": {"fingerprint": report.fingerprint, "in_force": report.in_force,
                             "differs": report.code_differs,
                             "edited_after_cutover": report.code_differs and report.cut_over}})
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


def _verify_reversible(settings: Settings, name: str, per_shape: int, as_json: bool) -> None:
    found = api.verify_reversibility(settings, name, per_shape=per_shape)
    if as_json:
        _echo_json({"migration": found.migration, "ok": found.ok, "checked": found.checked,
                    "untracked": found.untracked,
                    "shapes": [{"id": s.id, "shape": s.shape, "documents": s.documents,
                                "checked": s.checked, "failed": s.failed,
                                "outside_filter": s.outside_filter,
                                "example_id": s.example_id, "reason": s.reason}
                               for s in found.shapes]})
    else:
        click.echo(found.summary())
        for shape in found.failing:
            where = " (outside the migration's filter)" if shape.outside_filter else ""
            click.echo(f"  {shape.id} {shape.shape}{where}: {shape.failed} of {shape.checked} "
                       f"do not come back, e.g. _id {shape.example_id!r}: {shape.reason}")
    if not found.ok:
        sys.exit(1)


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: long-running commands finish their batch and exit 0."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


#: The pieces of the pipeline, all run by `run`, `revert` and `next --run`.
_PIPELINE = ("tailer", "backfill", "consumer")


def _serving(settings: Settings, migrations: list[Any],
             *components: str) -> AbstractContextManager[int | None]:
    """/metrics, health and hooks for a long-running command (see `observability.serving`)."""
    return observability.serving(settings, migrations, components,
                                 ranges_of=api.ranges_of(settings))


def _migrations(settings: Settings, names: tuple[str, ...]) -> list[Any]:
    if names:
        return [api.load(settings, n) for n in names]
    found = list(api.migrations(settings).values())
    if not found:
        raise UsageError(f"no migrations in {settings.transforms}")
    return found


@cli.command(help=_help(api.tail))
@click.argument("names", nargs=-1, metavar="[NAME...]")
@_SKIP_CHECK
@_settings_options
def tail(settings: Settings, names: tuple[str, ...], skip_checks: tuple[str, ...]) -> None:
    stop = _stop_on_signals()
    migrations = _migrations(settings, names)
    log.info("tailing %s", ", ".join(m.name for m in migrations))
    with collector.tuned(), _serving(settings, migrations, "tailer"):
        api.tail(settings, migrations, stop, skip_checks=skip_checks)


@cli.command(help=_help(api.backfill))
@click.argument("name")
@_BATCH_SIZE
@_RATE
@_RESET
@_command_option("--workers", OPTIONS["workers"],
                 "Scan N ranges at once in this process (threads).", default=1)
@_PROGRESS_QUIET
@_SKIP_CHECK
@_settings_options
def backfill(settings: Settings, name: str, batch_size: int | None, rate: float | None,
             reset: bool, workers: int, quiet: bool, skip_checks: tuple[str, ...]) -> None:
    stop = _stop_on_signals()
    with collector.tuned(), _serving(settings, [api.load(settings, name)], "backfill"):
        report = api.backfill(settings, name, batch_size=batch_size, rate=rate, reset=reset,
                              show_progress=not quiet, stop=stop, workers=workers,
                              skip_checks=skip_checks)
    click.echo(report.summary())


@cli.command(help=_help(api.throttle))
@click.argument("name")
@_command_option("--rate", OPTIONS["rate"], "Documents per second: read by all backfill "
                 "workers together, and applied by all consumers together.",
                 source="throttle")
@click.option("--off", is_flag=True, help="Remove the limit.")
@_settings_options
def throttle(settings: Settings, name: str, rate: float | None, off: bool) -> None:
    if (rate is None) == (not off):
        raise UsageError("give either --rate DOCS/S or --off")
    api.throttle(settings, name, rate=None if off else rate)
    click.echo(f"{name}: throttle " + ("off" if off else f"{rate:g} documents/s"))


@cli.command(help=_help(api.consume))
@click.argument("names", nargs=-1, metavar="[NAME...]")
@_settings_options
def consume(settings: Settings, names: tuple[str, ...]) -> None:
    stop = _stop_on_signals()
    migrations = _migrations(settings, names)
    log.info("consuming %s", ", ".join(m.name for m in migrations))
    with collector.tuned(), _serving(settings, migrations, "consumer"):
        api.consume(settings, migrations, stop)


@cli.command(help=_help(api.run))
@click.argument("name")
@_BATCH_SIZE
@_RATE
@_timeout(None, "Give up waiting for the topic to drain after this long.")
@click.option("--cutover", "then_cutover", is_flag=True,
              help="Cut over when drained (see `cutover --help`).")
@_PROGRESS_QUIET
@_SKIP_CHECK
@_settings_options
def run(settings: Settings, name: str, batch_size: int | None, rate: float | None,
        timeout: float | None, then_cutover: bool, quiet: bool,
        skip_checks: tuple[str, ...]) -> None:
    stop = _stop_on_signals()
    with collector.tuned(), _serving(settings, [api.load(settings, name)], *_PIPELINE):
        report = api.run(settings, name, batch_size=batch_size, rate=rate, timeout=timeout,
                         show_progress=not quiet, stop=stop, then_cutover=then_cutover,
                         skip_checks=skip_checks)
    counts = report.counts
    click.echo(f"{name}: {'drained' if report.drained else 'stopped'}; lag {report.lag}; "
               + ", ".join(f"{k} {counts.get(k, 0):,}" for k in
                           ("produced", "consumed", "updated", "deleted", "unchanged", "failed")))
    if not report.drained:
        sys.exit(1)
    if report.cutover is not None:
        _print_cutover(report.cutover)
    if report.unresolved:  # as `apply`: documents that failed make the run fail
        click.echo(f"{name}: {report.unresolved:,} failed documents unresolved in the "
                   f"dead-letter topic: see `cdc-migrator dlq list {name}`, fix the transform, "
                   f"then `cdc-migrator dlq retry {name}`", err=True)
        sys.exit(1)


@cli.command(help=_help(api.revert))
@click.argument("name")
@_BATCH_SIZE
@_RATE
@_timeout(None, "Give up waiting for the reverse run to drain after this long.")
@_PROGRESS_QUIET
@_settings_options
def revert(settings: Settings, name: str, batch_size: int | None, rate: float | None,
           timeout: float | None, quiet: bool) -> None:
    stop = _stop_on_signals()
    with collector.tuned(), _serving(settings, api.with_reverse(settings, name), *_PIPELINE):
        report = api.revert(settings, name, batch_size=batch_size, rate=rate, timeout=timeout,
                            show_progress=not quiet, stop=stop)
    if report.schema_note:
        click.echo(f"{name}: {report.schema_note}")
    click.echo(report.summary())
    if not report.ok:
        sys.exit(1)


def _print_cutover(report: Any) -> None:
    click.echo(report.summary())
    if report.verify and report.verify.sample and not report.ok:
        click.echo("  unmigrated sample: " + ", ".join(repr(i) for i in report.verify.sample))
    if not report.ok:
        sys.exit(1)


@cli.command(help=_help(api.cutover))
@click.argument("name")
@_timeout(60, "How long to wait for the fence and zero lag.")
@click.option("--dry-run", is_flag=True, help="Check everything, change nothing, say what "
              "would be done.")
@click.option("--allow-failed", is_flag=True,
              help="Cut over although some documents failed (dead-lettered).")
@_SKIP_CHECK
@_settings_options
def cutover(settings: Settings, name: str, timeout: float, dry_run: bool,
            allow_failed: bool, skip_checks: tuple[str, ...]) -> None:
    _print_cutover(api.cutover(settings, name, timeout=timeout, dry_run=dry_run,
                               allow_failed=allow_failed, skip_checks=skip_checks))


@cli.command(help=_help(api.preflight))
@click.argument("name")
@_SKIP_CHECK
@_JSON
@_settings_options
def preflight(settings: Settings, name: str, skip_checks: tuple[str, ...],
              as_json: bool) -> None:
    report = api.preflight(settings, name, skip=skip_checks)
    if as_json:
        _echo_json(report.as_dict())
    else:
        for check in report.checks:
            click.echo(check.line())
        click.echo(report.summary())
    if not report.ok:
        sys.exit(1)


@cli.command(help=_help(api.status))
@click.argument("name", required=False)
@click.option("--watch", is_flag=True, help="Refresh in place every --interval.")
@_command_option("--interval", OPTIONS["interval"],
                 "With --watch: the time between refreshes.", default=2)
@_JSON
@_settings_options
def status(settings: Settings, name: str | None, watch: bool, interval: float,
           as_json: bool) -> None:
    while True:
        found = api.status(settings, name)
        if as_json:
            _echo_json(found if name is None else found[0])
        else:
            if watch:
                click.clear()
            click.echo("\n".join(render(s) for s in found) or "no migrations have started")
        if not watch:
            return
        time.sleep(interval)


@cli.command(help=_help(api.pause))
@click.argument("name")
@_settings_options
def pause(settings: Settings, name: str) -> None:
    api.pause(settings, name)
    click.echo(f"{name}: paused")


@cli.command(help=_help(api.resume))
@click.argument("name")
@_settings_options
def resume(settings: Settings, name: str) -> None:
    api.resume(settings, name)
    click.echo(f"{name}: resumed")


@cli.command(help=_help(api.cancel))
@click.argument("name")
@_settings_options
def cancel(settings: Settings, name: str) -> None:
    api.cancel(settings, name)
    click.echo(f"{name}: cancelled")


@cli.command(help=_help(api.reset))
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_settings_options
def reset(settings: Settings, name: str, yes: bool) -> None:
    if not yes and sys.stdin.isatty() and \
            not click.confirm(f"Forget all progress of {name}?"):
        raise Refused(f"{name}: not reset")  # declined: a refusal (exit 1), not an interruption
    note = api.reset(settings, name)
    if note:
        click.echo(f"{name}: {note}")
    click.echo(f"{name}: reset; it will start from the beginning")


@cli.command(name="next", help=_help(api.next_migration))
@click.argument("collection")
@click.option("--run", "run_all", is_flag=True,
              help="Run the remaining migrations one after another (pipeline, then cutover), "
                   "each starting only after the previous one cut over.")
@_timeout(600, "With --run: how long each may take to drain.")
@_settings_options
def next_(settings: Settings, collection: str, run_all: bool, timeout: float) -> None:
    found = api.next_migration(settings, collection)
    if found is None:
        click.echo(f"every migration of {collection} has cut over")
        sys.exit(1)
    if not run_all:
        # A reverted migration is next again, but must be reset before it runs again.
        click.echo(found.name + (" (reverted)" if api.reverted(settings, found.name) else ""))
        return
    series_of = [m for m in api.migrations(settings).values() if m.collection == collection]
    with collector.tuned(), _serving(settings, series_of, *_PIPELINE):
        series = api.run_series(settings, collection, timeout=timeout,
                                stop=_stop_on_signals(),
                                on_start=lambda m: click.echo(f"== {m.name}"))
    for report in series.runs:
        if not report.drained or report.cutover is None:
            click.echo(f"{report.migration}: did not drain; stopping the series")
        else:
            click.echo(report.cutover.summary())
    if not series.ok:
        sys.exit(1)
    click.echo(f"every migration of {collection} has cut over")


@cli.command(help=_help(api.accept))
@click.argument("name")
@_BATCH_SIZE
@_RATE
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              metavar="N", help="Scan N ranges at once in this process (threads).")
@_PROGRESS_QUIET
@_settings_options
def accept(settings: Settings, name: str, batch_size: int | None, rate: float | None,
           workers: int, quiet: bool) -> None:
    with collector.tuned():
        report = api.accept(settings, name, batch_size=batch_size, rate=rate, workers=workers,
                            show_progress=not quiet, stop=_stop_on_signals())
    click.echo(report.summary())
    if not report.ok:
        sys.exit(1)


@cli.command(help=_help(api.history))
@click.argument("collection", required=False)
@_JSON
@_settings_options
def history(settings: Settings, collection: str | None, as_json: bool) -> None:
    found = api.history(settings, collection)
    if as_json:
        _echo_json([item.as_dict() for item in found])
    else:
        click.echo("\n".join(render_history(item) for item in found)
                   or f"no migration was ever armed in database {settings.database_name}")


@cli.group()
def dlq() -> None:
    """The dead-letter topic: failed documents and undecodable records."""


@dlq.command(name="list", help=_help(api.dlq_list))
@click.argument("name")
@_JSON
@_settings_options
def dlq_list(settings: Settings, name: str, as_json: bool) -> None:
    letters = api.dlq_list(settings, name)
    for letter in letters:
        if as_json:
            click.echo(json.dumps({"offset": letter.offset, **letter.entry}, default=str))
            continue
        entry = letter.entry
        last = (entry.get("traceback") or "").strip().splitlines()[-1:] or [""]
        click.echo(f"#{letter.offset} {entry.get('kind')} id={entry.get('id')}: "
                   f"{entry.get('error')}" + (f"  [{last[0]}]" if last[0] else ""))
    if not as_json:
        click.echo(f"{len(letters)} dead letters")


@dlq.command(name="retry", help=_help(api.dlq_retry))
@click.argument("name")
@_settings_options
def dlq_retry(settings: Settings, name: str) -> None:
    report = api.dlq_retry(settings, name)
    click.echo(report.summary())
    for item in report.failed_again[:10]:
        click.echo(f"  failed again {item['id']!r}: {item['error']}", err=True)
    if report.failed_again:
        sys.exit(1)


@cli.command(help=_help(api.init))
@click.argument("name")
@click.option("--collection", required=True, metavar="NAME",
              help="The collection the migration changes.")
@click.option("--with-test", "test_path", type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Also write a pytest stub to FILE (e.g. tests/test_NAME.py) "
              "that runs the transform on sample documents, without services.")
@_settings_options
def init(settings: Settings, name: str, collection: str, test_path: Path | None) -> None:
    for path in api.init(settings, name, collection, test_path=test_path):
        click.echo(f"wrote {path}")


@cli.group(name="config")
def config_group() -> None:
    """The configuration: flag > environment > configuration file > default."""


@config_group.command(name="show")
@_JSON
@_settings_options
def config_show(settings: Settings, as_json: bool) -> None:
    """Print the effective configuration (TOML; JSON with --json), each value's source,
    secrets masked. Every value is checked as the commands check it: exit 2 names a value
    not allowed."""
    ctx = click.get_current_context()
    sources: dict[str, Source] = ctx.meta.get(_SOURCES) or {}

    def source_of(param: str) -> str:
        found = sources.get(param)
        return found.kind if found is not None and found.kind != "python" else "default"

    shown = configfile.effective(settings, source_of,
                                 ctx.meta.get(_CONFIG) or configfile.ConfigFile())
    click.echo(json.dumps(shown, indent=2) if as_json else configfile.to_toml(shown))


def _report_error(message: str) -> None:
    """An expected error as one line on stderr (a JSON log line with --log-format json)."""
    if logs.is_json():
        log.error(message)
    else:
        click.echo(f"cdc-migrator: {logs.mask(message)}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: expected errors become one line on stderr and an exit code."""
    take_deprecations()  # none of an earlier command of this process
    try:
        cli.main(args=argv, prog_name="cdc-migrator", standalone_mode=False)
    except click.exceptions.Abort:  # Ctrl-C (click makes it an Abort), or no answer to a prompt
        click.echo("interrupted; progress so far is saved", err=True)
        sys.exit(130)
    except click.BadParameter as exc:
        if isinstance(exc, click.MissingParameter):  # the usage line tells what is missing
            exc.show()
            sys.exit(exc.exit_code)
        _report_error(exc.format_message())  # a value click parses (a flag's boolean)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CdcMigratorError as exc:
        _report_error(str(exc))
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
        _report_error(str(translated))
        sys.exit(translated.exit_code)
    sys.exit(0)


__all__ = ["UsageError", "cli", "main"]
