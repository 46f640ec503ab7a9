"""Connections refused for good: a wrong SASL password, an untrusted TLS certificate.

kafka-python 3.0 treats such a connection like a lost one: it tries again until its bootstrap
times out and then reports only ``KafkaTimeoutError: Unable to bootstrap``, which the tool
would retry until ``--retry-deadline`` with the cause hidden. Its network layer logs each
failed connection with the exception, though. A handler on the ``kafka`` logger keeps the
latest refusal among them; :func:`explain` turns the timeout that it explains (or a refusal
raised directly) into one line naming the cause, not to be retried.

A broker refusing SASL credentials answers and closes the connection at once. When the answer
and the close arrive together, kafka-python 3.0 reports the close and drops the answer (its
transport reads a socket until it would block, and aborts on the end of the stream with what it
read): the refusal is then never seen, and on a loaded machine a whole bootstrap attempt may
pass that way. :func:`_deliver_data_before_eof` makes its transports hand over what they read
before the end of the stream first. That method is private: kafka-python is pinned to the
release it is tested on, and importing this module fails loudly when the method is not there
as expected (:func:`check_patch_target`).

pymongo reports an untrusted certificate in its server-selection timeout, which is otherwise
an outage: that one is told apart by the message.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailedError,
    UnsupportedSaslMechanismError,
)
from pymongo.errors import ConnectionFailure

from ..errors import ConnectionRefused, TokenRefused
from .messages import message_of

#: A refusal logged this many seconds before a timeout is taken as its cause (one bootstrap
#: attempt lasts at most 10 s).
RECENT = 60.0
_SASL = (SaslAuthenticationFailedError, UnsupportedSaslMechanismError, IllegalSaslStateError)

_lock = threading.Lock()
_latest: tuple[float, BaseException] | None = None


def refusal_of(exc: BaseException) -> str | None:
    """What refused the connection, when ``exc`` (or the error it was raised from) is a
    refusal; None for anything retrying may cure."""
    if isinstance(exc, TokenRefused):
        return f"no OAUTHBEARER token for Kafka: {exc}"
    if isinstance(exc, UnsupportedSaslMechanismError):
        return ("the Kafka broker does not offer that SASL mechanism (" + message_of(exc) + "): "
                "check --kafka-sasl-mechanism and the port of --kafka")
    if isinstance(exc, _SASL) and '"status"' in message_of(exc):  # OAUTHBEARER's error (RFC 7628)
        return ("Kafka refused the OAUTHBEARER token (" + message_of(exc) + "): check the token's "
                "issuer, audience, signature and expiry (--kafka-sasl-oauth-*)")
    if isinstance(exc, _SASL):
        return ("Kafka refused the SASL credentials (" + message_of(exc) + "): check "
                "--kafka-sasl-mechanism, --kafka-sasl-username and --kafka-sasl-password")
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:  # the handshake error is the context
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return ("the Kafka broker's TLS certificate is not trusted ("
                    f"{cause.verify_message or cause.reason}): give the CA that signed it "
                    "with --kafka-ssl-cafile")
        if isinstance(cause, ssl.SSLError) and cause.reason == "WRONG_VERSION_NUMBER":
            return ("the Kafka listener does not speak TLS (SSL: WRONG_VERSION_NUMBER): check "
                    "--kafka-security-protocol and the port of --kafka")
        cause = cause.__context__ or cause.__cause__
    return None


_MONGO_UNTRUSTED = re.compile(r"certificate verify failed: ([^(]*?)\s*\(_ssl")


def explain(exc: BaseException) -> ConnectionRefused | None:
    """A :class:`ConnectionRefused` when ``exc`` is a refusal, or a Kafka timeout or lost
    connection following one that was logged within :data:`RECENT` seconds; else None."""
    if isinstance(exc, ConnectionFailure):
        untrusted = _MONGO_UNTRUSTED.search(str(exc))
        if untrusted is None:
            return None
        return ConnectionRefused(f"MongoDB's TLS certificate is not trusted ({untrusted[1]}): "
                                 "give the CA that signed it with --mongo-tls-ca-file")
    reason = refusal_of(exc)
    if reason is None and isinstance(exc, KafkaError) and getattr(exc, "retriable", False):
        with _lock:
            latest = _latest
        if latest is not None and time.monotonic() - latest[0] <= RECENT:
            reason = refusal_of(latest[1])
    return ConnectionRefused(reason) if reason else None


def forget() -> None:
    """A Kafka call succeeded: an earlier refusal no longer explains anything."""
    global _latest
    with _lock:
        _latest = None


class _Capture(logging.Handler):
    """Keeps the latest refusal that kafka-python logs as an argument of a record."""

    def emit(self, record: logging.LogRecord) -> None:
        global _latest
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, BaseException) and refusal_of(arg):
                with _lock:
                    _latest = (time.monotonic(), arg)


_capture = _Capture(logging.WARNING)
logging.getLogger("kafka").addHandler(_capture)


def _data_first(receive: Callable[[Any], tuple[bytes, Exception | None]]
                ) -> Callable[[Any], tuple[bytes, Exception | None]]:
    """``receive`` (a transport's ``_sock_recv``: what it read, and the error that ended the
    read) returning the data read before an error alone, and the error at the next read."""
    @functools.wraps(receive)
    def read(transport: Any) -> tuple[bytes, Exception | None]:
        pending = transport.__dict__.pop("_cdc_migrator_error", None)
        if pending is not None:
            return b"", pending
        data, error = receive(transport)
        if data and error is not None:
            # The socket stays readable at its end, so the transport reads again at once.
            transport._cdc_migrator_error = error
            return data, None
        return data, error
    return read


#: The kafka-python release the patch below is tested on (pyproject.toml pins it).
TESTED_KAFKA_PYTHON = "3.0.12"


def check_patch_target(classes: tuple[type, ...], version: str) -> None:
    """Fail loudly unless each of ``classes`` defines ``_sock_recv(self)`` itself.

    The patch replaces a private method: on a kafka-python that renamed it, moved it to a base
    class or gave it parameters, patching would silently do nothing, and a wrong SASL password
    would again look like an outage to be retried until the deadline.
    """
    for cls in classes:
        receive = cls.__dict__.get("_sock_recv")
        if receive is None or list(inspect.signature(receive).parameters) != ["self"]:
            raise _untested(version, f"{cls.__module__}.{cls.__name__}._sock_recv(self)")


def _untested(version: str, what: str) -> ImportError:
    return ImportError(f"cdc-migrator patches {what}, which kafka-python {version} does not "
                       f"define: install kafka-python=={TESTED_KAFKA_PYTHON}, the release it "
                       "is tested on")


def _deliver_data_before_eof() -> None:
    import kafka

    try:
        from kafka.net import transport
    except ImportError:
        raise _untested(kafka.__version__, "kafka.net.transport") from None
    classes = (transport.KafkaTCPTransport, transport.KafkaSSLTransport)
    check_patch_target(classes, kafka.__version__)
    for cls in classes:
        receive = cls.__dict__["_sock_recv"]
        if not hasattr(receive, "__wrapped__"):
            cls._sock_recv = _data_first(receive)


_deliver_data_before_eof()
