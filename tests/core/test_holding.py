"""Who holds, and who still applies other code: read from the members' reports."""

from __future__ import annotations

import time

from cdc_migrator.core.holding import member_name
from cdc_migrator.core.state import CODE_REPORT_STALE_AFTER, CodeState, MemberCode


def _report(fingerprint: str, holding: bool, age: float = 0.0) -> MemberCode:
    return MemberCode("consumer", fingerprint, holding, "host", time.time() - age)


def test_members_running_other_code_hold_or_still_apply_it_until_they_look():
    code = CodeState(fingerprint="new", members={
        "consumer@a": _report("new", False),
        "consumer@b": _report("old", True),
        "consumer@c": _report("old", False),  # has not looked since the code changed
        "consumer@d": _report("old", False, age=CODE_REPORT_STALE_AFTER + 1),  # gone
    })

    assert code.holding() == ["consumer@b"]
    assert code.applying_other_code() == ["consumer@c"]
    assert sorted(code.live_members()) == ["consumer@a", "consumer@b", "consumer@c"]


def test_nothing_is_other_code_before_any_code_is_in_force():
    code = CodeState(members={"tailer@h": _report("any", False)})
    assert code.applying_other_code() == [] and code.holding() == []


def test_a_member_name_is_a_field_name():
    assert member_name("consumer", "pod-1.cdc") == "consumer@pod-1-cdc"
    assert "." not in member_name("tailer") and member_name("tailer").startswith("tailer@")
