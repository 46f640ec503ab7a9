"""One line of text for an error or a value: the one shortener of the tool.

An error's message reaches a user in a log line, a refusal, ``status`` or a dead letter, where
it must be one line, short, and free of secrets. The drivers make that hard: pymongo appends
the server's whole reply and its topology description, kafka-python repeats the error's class
name after its code (``[Error 58] SaslAuthenticationFailedError: ...``). :func:`message_of`
keeps what a user reads; :func:`shorten` cuts any text (a value's ``repr`` included) to a
length.
"""

from __future__ import annotations

import re

from .logs import mask

#: How long an error's message may be by default, in characters.
MESSAGE_LIMIT = 300
_KAFKA_CODE = re.compile(r"^\[Error -?\d+\] ")
_PYMONGO_TIMEOUTS = re.compile(r" \(configured timeouts: [^)]*\)")


def shorten(text: str, limit: int) -> str:
    """``text``, or its first ``limit - 3`` characters and ``...`` when it is longer."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def message_of(exc: BaseException, limit: int = MESSAGE_LIMIT) -> str:
    """The first line of an error's message without the drivers' appendices, secrets masked,
    at most ``limit`` characters ("" when the error has no message)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    # pymongo appends the whole server reply, its timeouts and the topology description.
    text = text.split(", full error:")[0].split(", Timeout: ")[0]
    text = _PYMONGO_TIMEOUTS.sub("", text)
    text = _KAFKA_CODE.sub("", text)
    name = type(exc).__name__
    while text.startswith(f"{name}: "):  # kafka-python repeats the class name
        text = text[len(name) + 2:]
    return shorten(mask(text), limit)


def first_line(exc: BaseException, limit: int = MESSAGE_LIMIT) -> str:
    """``Type: message`` of an error, as :func:`message_of`, at most ``limit`` characters in
    all (the type alone when the error has no message)."""
    name = type(exc).__name__
    text = message_of(exc, max(limit - len(name) - 2, 3))
    return f"{name}: {text}" if text else name
