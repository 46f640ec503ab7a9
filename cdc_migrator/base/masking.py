"""Secrets out of text: every log line, error message and refusal goes through here.

The credentials of connection strings are masked wherever a URI appears (a malformed one
included), OAUTHBEARER tokens after ``Bearer``, and any value quoted after a key naming a
password or a secret (kafka-python logs its whole configuration as a dict at debug). The
secrets a process knows (the settings' passwords, registered with ``logs.add_secrets``) are
masked in every form text gives them: raw, ``repr``- and JSON-escaped, percent-encoded
(:func:`secret_forms`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote_plus


def mask_uri(uri: str) -> str:
    """``uri`` with its credentials replaced by ``***``, safe to print or log.

    Everything between ``://`` and the last ``@`` is hidden, whatever characters the password
    holds: the URIs that leak a password are the malformed ones (an unescaped ``@``, ``/`` or
    ``:`` in it), so nothing here relies on the URI being valid.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or "@" not in rest:
        return uri
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


# A connection string inside free text: up to the last "@" before a host name. A password may
# hold any character, spaces and line breaks included (a malformed URI does not escape them),
# so the credentials end only there: on the same line, or on the next ones while each has an
# "@" of its own. Text after the URI with an "@" of its own is masked too.
_URI_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?:[^\n]|\n(?=[^\n]*@))*@(?=[\w\[])")
# An OAUTHBEARER token as the Kafka client's debug log shows its SASL messages ("auth=Bearer
# eyJ..."): a credential until it expires.
_BEARER = re.compile(r"(?i)\b(Bearer\s+)[\w\-.~+/]+=*")
# Shorter secrets are not registered for masking: they would blank out ordinary words.
MIN_SECRET_LENGTH = 4
# A secret named by its key, whatever its value: a password, passwd or secret quoted after a
# key holding the word (a dict's repr, JSON), or unquoted after "KEY=" (a query string).
_KEYED_SECRET = re.compile(
    r"""(?i)([\w.-]*(?:password|passwd|secret)[\w.-]*['"]?\s*[:=]\s*)"""
    r"""('(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"|(?<==)[^\s&;,'"]+)""")


def secret_forms(secret: str) -> list[str]:
    """Every form ``secret`` takes in text, longest first: as it is, escaped by ``repr`` (a
    container's repr, an error's) or by JSON (ASCII or not), percent-encoded (a URI, a form),
    the ``repr`` of its UTF-8 bytes, and each escaped form escaped once more (a repr quoted in
    an error, JSON of a repr)."""
    encoded = secret.encode("utf-8", "surrogatepass")
    forms = {secret, repr(secret)[1:-1], repr(encoded)[2:-1], json.dumps(secret)[1:-1],
             json.dumps(secret, ensure_ascii=False)[1:-1], quote(encoded, safe=""),
             quote_plus(encoded, safe=""), quote(encoded)}
    forms |= {escaped for f in list(forms) for escaped in (
        repr(f)[1:-1], json.dumps(f)[1:-1], json.dumps(f, ensure_ascii=False)[1:-1])}
    return sorted((f for f in forms if f), key=len, reverse=True)


def mask_forms(text: str, forms: Iterable[str]) -> str:
    """``text`` with each of ``forms`` (longest first), keyed secrets, bearer tokens and the
    credentials of connection strings replaced by ``***``."""
    for form in forms:
        text = text.replace(form, "***")
    text = _KEYED_SECRET.sub(_masked_value, text)
    return _BEARER.sub(r"\1***", _URI_CREDENTIALS.sub(r"\1***@", text))


def _masked_value(match: re.Match[str]) -> str:
    value = match.group(2)
    quote_mark = value[0] if value[0] in "'\"" else ""
    return f"{match.group(1)}{quote_mark}***{quote_mark}"


def mask_secrets(text: str, *secrets: str | None) -> str:
    """Remove the credentials of connection strings, bearer tokens, keyed secrets and the
    given secrets, in every form (:func:`secret_forms`), from ``text``."""
    forms = {f for s in secrets if s and len(s) >= MIN_SECRET_LENGTH for f in secret_forms(s)}
    return mask_forms(text, sorted(forms, key=len, reverse=True))


def uri_secrets(uri: str) -> list[str]:
    """The credentials of ``uri`` (all of them, and the password alone, as written and
    decoded), to be masked wherever they might appear, e.g. quoted in part by a driver's
    message about a malformed URI."""
    rest = uri.partition("://")[2]
    if "@" not in rest:
        return []
    userinfo = rest.rpartition("@")[0]
    password = userinfo.partition(":")[2]
    return [s for s in dict.fromkeys((userinfo, password, unquote_plus(password)))
            if len(s) >= MIN_SECRET_LENGTH]


_SECRET_WORDS = ("password", "secret", "token")


def is_secret_option(key: str) -> bool:
    """Whether a client option (of the file's ``[kafka]``/``[mongo]`` tables) is a secret."""
    return any(word in key.lower() for word in _SECRET_WORDS)
