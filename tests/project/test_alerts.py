"""The Prometheus alert rules (deploy/prometheus/cdc-migrator.rules.yml): checked and unit-tested
by the real promtool (built by scripts/tools.sh), on the metrics the tool serves, each alert
with its runbook in docs/deploy.md."""

from __future__ import annotations

import re
import subprocess

import yaml

from ..harness import ROOT, exported_series

RULES = ROOT / "deploy" / "prometheus" / "cdc-migrator.rules.yml"
TESTS = ROOT / "deploy" / "prometheus" / "cdc-migrator.rules.test.yml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
#: What the issue asks to be alerted on, each by its alert.
ASKED = {"CdcMigratorLagNotDraining", "CdcMigratorPieceStopped", "CdcMigratorNoConsumer",
         "CdcMigratorTailerCheckpointStale", "CdcMigratorRunwayShorterThanBackfill",
         "CdcMigratorDeadLetters", "CdcMigratorThrottleHeld", "CdcMigratorFailed"}


def rules() -> list[dict]:
    return [r for group in yaml.safe_load(RULES.read_text())["groups"] for r in group["rules"]]


def alerts() -> dict[str, dict]:
    return {r["alert"]: r for r in rules() if "alert" in r}


def test_promtool_checks_the_rules(go_tool):
    done = subprocess.run([str(go_tool("promtool")), "check", "rules", str(RULES)],
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_each_alert_fires_on_its_broken_series_and_stays_quiet_on_healthy_ones(go_tool):
    done = subprocess.run([str(go_tool("promtool")), "test", "rules", TESTS.name],
                          capture_output=True, text=True, timeout=120, cwd=TESTS.parent)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_firing_case_and_a_healthy_migration_in_its_tests():
    groups = yaml.safe_load(TESTS.read_text())["tests"]
    fired: dict[str, set[str]] = {}
    for group in groups:
        healthy = any('migration="healthy' in s["series"] for s in group["input_series"])
        assert healthy, f"{group['name']}: no healthy migration to stay quiet on"
        for case in group["alert_rule_test"]:
            fired.setdefault(case["alertname"], set()).update(
                a["exp_labels"]["migration"] for a in case["exp_alerts"])

    assert ASKED <= set(alerts())
    for name in alerts():
        assert fired.get(name), f"{name} is never tested firing"
        assert not any(m.startswith("healthy") for m in fired[name]), name


def test_every_alert_queries_served_series_and_names_its_runbook_in_docs_deploy():
    served = exported_series()
    recorded = {r["record"] for r in rules() if "record" in r}
    doc = DEPLOY_DOC.read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", doc, re.MULTILINE)}
    for name, rule in alerts().items():
        named = set(re.findall(r"\b(cdc_migrator_[a-z_]+)\b", rule["expr"]))
        assert named <= served | recorded, (name, named - served)
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("docs/deploy.md#"), name
        assert url.split("#")[1] in anchors, f"{name}: no runbook heading for {url}"
        assert f"`{name}`" in doc, f"{name} is not named in docs/deploy.md"


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces dashed."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
