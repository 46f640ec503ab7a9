"""OAUTHBEARER tokens for Kafka: OIDC client credentials, or a command that prints one.

kafka-python asks its ``sasl_oauth_token_provider`` for a token on every SASL handshake (each
new connection, and each re-authentication). One provider serves every client of a process;
it keeps its token until shortly before it expires, so a process asks the identity provider
about once per token lifetime, not once per connection.

A token endpoint or command that refuses (a wrong client secret: HTTP 400/401, a command
exiting non-zero) raises :class:`TokenRefused`, which ``refusals`` reports as one line, not
retried. An endpoint that cannot be reached fails the connection like a lost broker, which the
tool's retries ride out.
"""

from __future__ import annotations

import base64
import binascii
import json
import shlex
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from kafka.net.sasl.oauth import AbstractTokenProvider

from ..errors import TokenRefused

#: A token is renewed this long before it expires (at most: a fifth of its lifetime).
RENEW_BEFORE = 60.0
#: How long a token whose lifetime is unknown (neither ``expires_in`` nor a JWT ``exp``) is kept.
UNKNOWN_LIFETIME = 60.0
#: How long one request for a token may take by default (an endpoint's answer, a command's run).
REQUEST_TIMEOUT = 30.0


def parse_extensions(text: str | None) -> dict[str, str]:
    """``KEY=VALUE,...`` (SASL extensions, e.g. Confluent Cloud's ``logicalCluster``) as a
    dict; a pair without ``=`` is a ValueError."""
    extensions = {}
    for pair in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{pair!r} is not KEY=VALUE")
        extensions[key.strip()] = value.strip()
    return extensions


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (epoch seconds) of a JWT, read without verifying it; None when the
    token is not a JWT or has none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) else None


class CachedToken(AbstractTokenProvider):
    """A token provider that keeps the token ``fetch`` gives until shortly before it expires.

    ``fetch`` returns the token and its lifetime in seconds (None: read the JWT's ``exp``).
    """

    def __init__(self, fetch: Callable[[], tuple[str, float | None]],
                 extensions: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._fetch, self._extensions, self._clock = fetch, dict(extensions or {}), clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._renew_at:
                token, lifetime = self._fetch()
                if lifetime is None:
                    expiry = jwt_expiry(token)
                    lifetime = expiry - now if expiry is not None else UNKNOWN_LIFETIME
                self._token = token
                self._renew_at = now + lifetime - min(RENEW_BEFORE, lifetime / 5)
            return self._token

    def extensions(self) -> dict[str, str]:
        return dict(self._extensions)


def client_credentials(url: str, client_id: str, secret: str, scope: str | None = None,
                       timeout: float = REQUEST_TIMEOUT
                       ) -> Callable[[], tuple[str, float | None]]:
    """A fetch for :class:`CachedToken`: the OAuth 2.0 client credentials grant at ``url``,
    the client authenticated with HTTP Basic (RFC 6749 2.3.1)."""
    form = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
    basic = base64.b64encode(f"{urllib.parse.quote(client_id, safe='')}:"
                             f"{urllib.parse.quote(secret, safe='')}".encode()).decode()
    request = urllib.request.Request(
        url, data=urllib.parse.urlencode(form).encode(), method="POST",
        headers={"Authorization": f"Basic {basic}", "Accept": "application/json",
                 "Content-Type": "application/x-www-form-urlencoded"})

    def fetch() -> tuple[str, float | None]:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                answer = json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            if exc.code in (400, 401, 403):
                raise TokenRefused(f"the token endpoint {url} refused client {client_id!r} "
                                   f"(HTTP {exc.code}{_oauth_error(exc)}): check "
                                   "--kafka-sasl-oauth-client-id and "
                                   "--kafka-sasl-oauth-client-secret") from None
            raise
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenRefused(f"the token endpoint {url} answered without an access_token: "
                               "check --kafka-sasl-oauth-token-url")
        lifetime = answer.get("expires_in")
        return token, float(lifetime) if isinstance(lifetime, int | float) else None

    return fetch


def _oauth_error(exc: urllib.error.HTTPError) -> str:
    """``: ERROR`` from an OAuth error reply (``{"error": "invalid_client"}``), or nothing."""
    try:
        error = json.loads(exc.read()).get("error")
    except (ValueError, AttributeError, OSError):
        return ""
    return f": {str(error)[:80]}" if error else ""


def command_token(command: str,
                  timeout: float = REQUEST_TIMEOUT) -> Callable[[], tuple[str, float | None]]:
    """A fetch for :class:`CachedToken`: run ``command`` (split as a shell would, not run by
    one); what it prints is the token, its JWT ``exp`` its expiry."""
    argv = shlex.split(command)

    def fetch() -> tuple[str, float | None]:
        try:
            done = subprocess.run(argv, capture_output=True, text=True,
                                  timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TokenRefused(f"cannot run the token command {argv[0]!r} ({exc}): check "
                               "--kafka-sasl-oauth-token-command") from None
        token = done.stdout.strip()
        if done.returncode != 0 or not token:
            said = (done.stderr.strip().splitlines() or [""])[-1][:200]
            raise TokenRefused(f"the token command {argv[0]!r} "
                               + (f"exited {done.returncode}" if done.returncode else
                                  "printed no token") + (f" ({said})" if said else "")
                               + ": check --kafka-sasl-oauth-token-command")
        return token, None

    return fetch


def provider(token_url: str | None, client_id: str | None, client_secret: str | None,
             scope: str | None, token_command: str | None,
             extensions: str | None, timeout: float = REQUEST_TIMEOUT) -> CachedToken:
    """The token provider of the OAUTHBEARER settings; a missing or contradictory setting is
    a ValueError naming it."""
    try:
        extended = parse_extensions(extensions)
    except ValueError as exc:
        raise ValueError(f"--kafka-sasl-oauth-extensions: {exc}") from None
    if token_command and token_url:
        raise ValueError("give --kafka-sasl-oauth-token-url or --kafka-sasl-oauth-token-command, "
                         "not both")
    if token_command:
        return CachedToken(command_token(token_command, timeout), extended)
    if not token_url:
        raise ValueError("--kafka-sasl-mechanism OAUTHBEARER needs --kafka-sasl-oauth-token-url "
                         "(with a client id and secret) or --kafka-sasl-oauth-token-command")
    if not client_id or not client_secret:
        raise ValueError("--kafka-sasl-oauth-token-url needs --kafka-sasl-oauth-client-id and "
                         "--kafka-sasl-oauth-client-secret")
    return CachedToken(client_credentials(token_url, client_id, client_secret, scope, timeout),
                       extended)
