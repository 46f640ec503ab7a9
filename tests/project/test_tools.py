"""The Go tools that scripts/tools.sh builds from the Go module proxy: each runs, at its pin.

A broken build (a missing binary, a stale pin, a binary that does not start) fails here first,
in CI (CDC_MIGRATOR_REQUIRE_TOOLS=1), rather than as a puzzling failure in the tests that use
the tool. The chart's tests (test_helm_chart.py) use helm in earnest.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import urllib.request
from pathlib import Path

import pytest

from ..harness import ROOT, free_port, tool, wait_for

RULES = """\
groups:
  - name: smoke
    rules:
      - alert: TargetDown
        expr: up == 0
        for: 1m
        labels: {severity: page}
        annotations: {summary: "{{ $labels.job }} is down"}
"""

WORKFLOW = """\
on: push
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: make test
"""


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)


def test_promtool_checks_a_rules_file_and_names_a_broken_one(go_tool, tmp_path):
    promtool = go_tool("promtool")
    good, bad = tmp_path / "good.yml", tmp_path / "bad.yml"
    good.write_text(RULES)
    bad.write_text(RULES.replace("up == 0", "up =="))

    version = _run(promtool, "--version")
    checked = _run(promtool, "check", "rules", good)
    broken = _run(promtool, "check", "rules", bad)

    assert f"promtool, version {tool('promtool', 'version')} " in version.stdout, version.stdout
    assert checked.returncode == 0 and "SUCCESS: 1 rules found" in checked.stdout, checked
    assert broken.returncode == 1 and "FAILED" in broken.stdout + broken.stderr, broken


def test_prometheus_scrapes_a_target_and_answers_its_http_api(go_tool, tmp_path):
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(textwrap.dedent(f"""\
        global: {{scrape_interval: 1s}}
        scrape_configs:
          - job_name: self
            static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
        """))
    with open(tmp_path / "prometheus.log", "wb") as log:
        server = subprocess.Popen(
            [str(go_tool("prometheus")), f"--config.file={config}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT)

    def api(path: str) -> dict | None:
        assert server.poll() is None, (tmp_path / "prometheus.log").read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                return json.load(reply)
        except OSError:
            return None

    try:
        up = wait_for(lambda: (r := api("/api/v1/query?query=up")) and r["data"]["result"],
                      what="prometheus's first scrape of itself")
        build = api("/api/v1/status/buildinfo")
    finally:
        server.terminate()
        server.wait(timeout=60)

    assert [(s["metric"]["job"], s["value"][1]) for s in up] == [("self", "1")]
    assert build is not None and build["data"]["version"] == tool("prometheus", "version")


def test_helm_reports_its_pinned_version(go_tool):
    done = _run(go_tool("helm"), "version", "--template", "{{.Version}}")

    assert done.returncode == 0, done.stderr
    assert done.stdout == tool("helm", "version")


@pytest.mark.parametrize(("workflow", "finding"), [
    (WORKFLOW, None),
    (WORKFLOW.replace("make test", "echo ${{ matrix.python }}"),
     'property "python" is not defined'),
    (WORKFLOW.replace("    runs-on: ubuntu-latest\n", ""), '"runs-on" section is missing'),
], ids=["good", "undefined-matrix-value", "no-runs-on"])
def test_actionlint_passes_a_good_workflow_and_names_what_is_wrong(go_tool, tmp_path, workflow,
                                                                   finding):
    path = tmp_path / "ci.yml"
    path.write_text(workflow)
    # No shellcheck or pyflakes: the findings must not depend on what else is installed.
    done = _run(go_tool("actionlint"), "-shellcheck=", "-pyflakes=", "-no-color", path)

    if finding is None:
        assert done.returncode == 0, done.stdout + done.stderr
    else:
        assert done.returncode == 1 and finding in done.stdout, done.stdout + done.stderr


def test_actionlint_reports_its_pinned_version(go_tool):
    done = _run(go_tool("actionlint"), "--version")

    assert done.stdout.splitlines()[0] == tool("actionlint", "version")


def test_docs_name_the_pinned_versions():
    # The pins live in scripts/tools.sh; docs/testing.md's table must follow a bump.
    table = (ROOT / "docs" / "testing.md").read_text()

    for name in ("prometheus", "helm", "actionlint"):
        assert f"| {tool(name, 'version')} " in table, name
