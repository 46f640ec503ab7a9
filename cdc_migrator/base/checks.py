"""The check of every value a user gives, in one place: a setting of the table or an option of
one command, from a flag, an environment variable, the configuration file, ``throttle`` or the
state read back.

A :class:`Setting` says how a user gives a value and what it takes; :meth:`Setting.check`
takes a value as it came (:class:`Source`): text from a flag or a variable is parsed, a typed
value (the file's, the state's, a Python caller's) must be of exactly the setting's kind (no
``true`` for a number, no list for a number of seconds). Numbers are finite and in range,
protocols and mechanisms one of their names, paths usable, names of the kind MongoDB and Kafka
take (a ``rule``). A value refused is one line naming the value, where it came from and what
is allowed (:class:`~cdc_migrator.errors.SettingError`, exit 2), before any work starts.
:data:`OPTIONS` declares the options of single commands (``--rate``, ``--batch-size``, ...).

Durations have one parser (``Setting.check``, for a setting with a ``unit``): a number and
its unit (``250ms``, ``5s``, ``2m``, ``1h``, ``1d``), kept in the setting's unit. A bare
number is read in that unit: plainly where the setting's name says it (``mongo_timeout_ms``,
``lease_seconds``), with a deprecation warning elsewhere (the spelling before 0.2.0).
Deprecated spellings (a flag, a variable, a file key, a bare number) are noted by
:func:`deprecated` and logged once each by the command line (:func:`take_deprecations`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import NotAllowed, SettingError
from .masking import mask_secrets
from .messages import shorten

#: The longest time any setting takes, in seconds: beyond it a wait is a mistake, and far
#: beyond it the platform's waits overflow.
A_YEAR = 365 * 86_400
_UNITS = {"SECONDS": "seconds", "MS": "milliseconds", "DOCS/S": "documents per second",
          "BYTES": "bytes"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)
_NUMBER = re.compile(r"\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*", re.ASCII)
_DURATION = re.compile(r"\s*(?P<number>[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?)"
                       r"\s*(?P<unit>ms|s|m|h|d)\s*", re.ASCII)
#: The units a duration takes, in milliseconds (whole for every unit: 0.3s is 300 ms exactly).
_MILLISECONDS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_UNIT_WORDS = {"s": "seconds", "ms": "milliseconds"}
# Deprecated spellings met while reading the values of one command, in order, each once.
_DEPRECATIONS: dict[str, None] = {}


def deprecated(message: str) -> None:
    """Note that a deprecated spelling was used (logged once by :func:`take_deprecations`)."""
    _DEPRECATIONS[message] = None


def take_deprecations() -> list[str]:
    """The deprecations noted since the last call, each once, in the order they were met."""
    taken = list(_DEPRECATIONS)
    _DEPRECATIONS.clear()
    return taken


def duration_text(milliseconds: float) -> str:
    """A duration as a person writes it, in the largest unit that keeps it whole: ``5m``,
    ``250ms``, ``365d``; in milliseconds when none does."""
    for unit in ("d", "h", "m", "s", "ms"):
        count = milliseconds / _MILLISECONDS[unit]
        if count == int(count) and (count or unit == "s"):
            return f"{int(count)}{unit}"
    return f"{milliseconds!r}ms"


SourceKind = Literal["flag", "env", "file", "default", "throttle", "state", "python"]


@dataclass(frozen=True)
class Source:
    """Where a value came from, as the line refusing it names it: ``name`` is the flag, the
    variable, the file's key or the state's field; ``place`` the file or the migration."""

    kind: SourceKind
    name: str
    place: str = ""

    @property
    def text(self) -> bool:
        """Whether the value is text to parse (a flag, a variable), not a typed value."""
        return self.kind in ("flag", "env", "throttle")

    def __str__(self) -> str:
        return {"flag": f"flag {self.name}", "env": f"environment variable {self.name}",
                "file": f"{self.name} in config file {self.place}",
                "throttle": f"throttle {self.name}",
                "state": f"{self.name} in the state of {self.place}",
                "default": f"the default of {self.name}",
                "python": f"setting {self.name}"}[self.kind]


@dataclass(frozen=True)
class Setting:
    """How a user gives one setting, and what it takes (the metadata of a Settings field).

    ``flag`` defaults to ``--`` and the field's name with dashes, ``env`` to ``CDC_MIGRATOR_``
    and the name in capitals, ``key`` (the configuration file's) to the name; ``env`` or
    ``key`` None means there is none. ``commands`` names the commands that take the setting
    as an option (``"config show"`` for a subcommand); None: every command. ``path`` is
    ``"dir"`` or ``"file"`` (a relative path in the file is relative to the file);
    ``"existing"`` files must exist.
    ``kafka``/``mongo`` name the client option the setting gives (TLS, SASL). ``minimum`` and
    ``maximum`` bound a number (inclusive), ``above`` from below (exclusive); ``rule`` checks a
    text further and returns, when it is broken, what is allowed. ``unit`` ("s" or "ms") makes
    it a duration, kept in that unit (and bounded in it). ``old_flags``, ``old_env`` and
    ``old_keys`` are deprecated spellings still read, with a warning, for one release.
    """

    help: str
    flag: str = ""
    env: str | None = ""
    key: str | None = ""
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    rule: Callable[[str], str | None] | None = None
    path: Literal["dir", "file", "existing"] | None = None
    secret: bool = False
    commands: tuple[str, ...] | None = None
    kafka: str | None = None
    mongo: str | None = None
    unit: Literal["s", "ms"] | None = None
    old_flags: tuple[str, ...] = ()
    old_env: tuple[str, ...] = ()
    old_keys: tuple[str, ...] = ()
    name: str = ""
    kind: type = str
    default: Any = None

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def env_name(self) -> str | None:
        return f"CDC_MIGRATOR_{self.name.upper()}" if self.env == "" else self.env

    @property
    def key_name(self) -> str | None:
        return self.name if self.key == "" else self.key

    def check(self, value: Any, source: Source) -> Any:
        """``value`` as this setting takes it, or :class:`~cdc_migrator.errors.SettingError`.

        Text from a flag or a variable is parsed; a typed value (the file's, the state's, a
        Python caller's) must be of exactly the setting's kind. None means "not set", which
        only a setting without a default accepts.
        """
        if value is None and self.default is None:
            return None
        try:
            return self._checked(value, source)
        except NotAllowed as exc:
            shown = "***" if self.secret else brief(value)
            raise SettingError(f"invalid value {shown} for {source}: expected "
                               f"{str(exc) or self.allowed()}") from None

    def allowed(self) -> str:
        """What the setting takes, in words (for help texts and refusals)."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is bool:
            return "true or false"
        if self.path == "existing":
            return "the path of an existing file"
        if self.path:
            return "a path"
        if self.unit:
            bare = f", or a number of {_UNIT_WORDS[self.unit]}" if self._unit_named() else ""
            return ("a duration, a number and its unit (ms, s, m, h, d; e.g. 250ms, 30s, 5m)"
                    + self._duration_range() + bare)
        if self.kind in (int, float):
            what = "an integer" if self.kind is int else "a finite number"
            unit = _UNITS.get(self.metavar or "")
            return what + (f" of {unit}" if unit else "") + self._range()
        return "text"

    def _range(self) -> str:
        high = f"{_plain(self.maximum)}" if self.maximum is not None else None
        if self.above is not None:
            return f" above {_plain(self.above)}" + (f", at most {high}" if high else "")
        if self.minimum is not None:
            low = _plain(self.minimum)
            return f" from {low} to {high}" if high else f" of at least {low}"
        return f" of at most {high}" if high else ""

    def _duration_range(self) -> str:
        scale = _MILLISECONDS[self.unit or "s"]
        low = None if self.minimum is None else duration_text(self.minimum * scale)
        high = None if self.maximum is None else duration_text(self.maximum * scale)
        if self.above is not None:
            return f" above {duration_text(self.above * scale)}" + \
                (f", at most {high}" if high else "")
        if low is not None:
            return f" from {low} to {high}" if high else f" of at least {low}"
        return f" of at most {high}" if high else ""

    def text(self, value: Any) -> str:
        """``value`` spelled as a flag or a variable takes it: a duration with its unit."""
        if self.unit and isinstance(value, (int, float)) and not isinstance(value, bool):
            return duration_text(value * _MILLISECONDS[self.unit])
        if isinstance(value, bool):
            return "1" if value else ""
        return str(value)

    def _unit_named(self) -> bool:
        """Whether the setting's name says its unit, so that a bare number is plain."""
        return self.name.endswith(("_ms", "_seconds"))

    def _duration(self, value: Any, source: Source) -> Any:
        """A duration from a flag, a variable or the file: text with a unit, or a bare number
        in the setting's unit (deprecated where the name does not say the unit)."""
        found = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if found is not None:
            scaled = float(found["number"]) * _MILLISECONDS[found["unit"]] \
                / _MILLISECONDS[self.unit or "s"]
            if not math.isfinite(scaled) or (self.kind is int and scaled != int(scaled)):
                raise NotAllowed
            return int(scaled) if self.kind is int else scaled
        number = _number(value, source, self.kind)
        if source.kind in ("flag", "env", "file") and not self._unit_named():
            spelled = f"{_plain(number).replace(',', '')}{self.unit}"
            deprecated(f"{source}: a number without a unit is read as "
                       f"{_UNIT_WORDS[self.unit or 's']}; write {spelled} (a number without "
                       "a unit is deprecated)")
        return number

    def _checked(self, value: Any, source: Source) -> Any:
        if self.kind is bool:
            return _boolean(value, source)
        if self.kind in (int, float):
            number = self._duration(value, source) if self.unit and source.kind != "python" \
                else _number(value, source, self.kind)
            low, high = self.minimum, self.maximum
            if (low is not None and number < low) or (high is not None and number > high) \
                    or (self.above is not None and number <= self.above):
                raise NotAllowed
            return number
        if isinstance(value, Path) and self.path and not source.text:
            value = str(value)
        if not isinstance(value, str):
            raise NotAllowed
        if self.choices:
            return _choice(value, self.choices, exact=self.kafka is None)
        if self.path:
            return _path(value, self.path, self.kind)
        problem = self.rule(value) if self.rule else None
        if problem:
            raise NotAllowed(problem)
        return value


def _plain(number: float) -> str:
    """A bound as a person writes it: 31,536,000 rather than 3.1536e+07."""
    return f"{int(number):,}" if number == int(number) else f"{number:g}"


def brief(value: Any) -> str:
    """A value as a refusal shows it: its repr, on one line, credentials masked, at most 60
    characters."""
    return shorten(mask_secrets(repr(value)), 60)


def _boolean(value: Any, source: Source) -> bool:
    if isinstance(value, bool):
        return value
    if source.text and isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise NotAllowed


def _number(value: Any, source: Source, kind: type) -> int | float:
    if source.text and isinstance(value, str):
        pattern = _INTEGER if kind is int else _NUMBER
        if not pattern.fullmatch(value):
            raise NotAllowed
        value = int(value) if kind is int else float(value)
    if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
        raise NotAllowed  # a TOML true is no 1, a list no number
    if kind is int:
        return int(value)
    try:
        number = float(value)
    except OverflowError:
        raise NotAllowed from None
    if not math.isfinite(number):
        raise NotAllowed
    return number


def _choice(value: str, choices: tuple[str, ...], *, exact: bool) -> str:
    for choice in choices:
        if value == choice or (not exact and value.upper() == choice):
            return choice
    raise NotAllowed


def _path(value: str, how: str, kind: type) -> Any:
    if not value:
        raise NotAllowed
    try:  # a NUL, or a name longer than the system takes, fails every use of the path
        is_file = Path(value).is_file()
    except (OSError, ValueError):
        raise NotAllowed from None
    if how == "existing" and not is_file:
        raise NotAllowed
    return Path(value) if kind is Path else value


def option(name: str, kind: type, **how: Any) -> Setting:
    """The spec of an option of single commands: a flag only, checked as a setting is."""
    return Setting(help="", name=name, kind=kind, env=None, key=None, commands=(), **how)


#: The options of single commands (their help is the command's), declared and checked as the
#: settings are. ``rate`` is also what ``throttle`` sets and the state keeps.
OPTIONS: dict[str, Setting] = {spec.name: spec for spec in (
    option("batch_size", int, metavar="N", minimum=1, maximum=100_000),
    option("rate", float, metavar="DOCS/S", above=0),
    option("timeout", float, metavar="DURATION", unit="s", minimum=0, maximum=A_YEAR),
    option("interval", float, metavar="DURATION", unit="s", minimum=0.1, maximum=86_400),
    option("workers", int, metavar="N", minimum=1, maximum=1_000),
    option("sample", int, metavar="N", minimum=1, maximum=1_000_000),
    option("sample_ids", int, metavar="N", minimum=0, maximum=1_000_000),
    option("max_shapes", int, metavar="N", minimum=1, maximum=1_000_000),
    option("per_shape", int, metavar="N", minimum=1, maximum=1_000_000),
)}
