"""The Grafana dashboard (deploy/grafana/cdc-migrator.json): well formed, on the metrics the tool
serves, and every panel's query answered with data by a real Prometheus scraping a running
pipeline (prometheus built by scripts/tools.sh).

No Grafana runs here: what is tested is the JSON and the queries, not how Grafana draws them.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from cdc_migrator import api
from cdc_migrator.capture.tailer import arm

from ..harness import (
    ROOT,
    AppWriter,
    Service,
    exported_series,
    free_port,
    run_cli,
    wait_for,
    write_transforms,
)

DASHBOARD = ROOT / "deploy" / "grafana" / "cdc-migrator.json"
#: What the issue asks the dashboard to show, each by a panel's title.
SUBJECTS = {"Backfill progress", "Events produced", "Documents applied", "Consumer lag",
            "Lag by partition", "Change to applied", "Dead letters", "Throttle",
            "History runway", "Processes up", "Phase"}
#: How the test fills Grafana's variables: every migration, and a rate window of a few scrapes.
VARIABLES = {"$migration": ".*", "$__rate_interval": "5s"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    """(panel title, query) of every target of every panel, as Grafana would send it."""
    found = []
    for panel in panels():
        for target in panel["targets"]:
            query = target["expr"]
            for name, value in VARIABLES.items():
                query = query.replace(name, value)
            found.append((panel["title"], query))
    return found


# ------------------------------------------------------------------------ the JSON

def test_the_dashboard_shows_what_an_operator_watches_for_one_migration_or_all():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    titles = [p["title"] for p in panels()]

    assert SUBJECTS <= set(titles), SUBJECTS - set(titles)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    migration = variables["migration"]
    assert migration["includeAll"] and migration["multi"] and migration["allValue"] == ".*"
    assert "cdc_migrator_phase" in migration["definition"]
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert 'migration=~"$migration"' in target["expr"], (panel["title"], target)


def test_panels_have_unique_ids_and_do_not_overlap():
    cells: dict[tuple[int, int], str] = {}
    every = dashboard()["panels"]

    assert len({p["id"] for p in every}) == len(every)
    for panel in every:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]


def test_every_query_names_only_series_the_tool_serves():
    served = exported_series()
    for title, query in queries():
        named = set(re.findall(r"\b((?:cdc_migrator|process)_[a-z_]+)\b", query))
        unknown = {n for n in named if n not in served}
        assert not unknown, (title, unknown)


# ----------------------------------------------------------- against a real Prometheus

TRANSFORMS = {"users.py": textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="users", batch_size=100)
    def picky_role(doc, ctx):
        if doc["_id"] % 100 == 7:
            raise ValueError("no role for this one")
        if doc.get("role") is None:
            return {"role": "user"}
'''), "accounts.py": textwrap.dedent('''
    from cdc_migrator import migration

    @migration(collection="accounts")
    def add_plan(doc, ctx):
        if doc["_id"] == 13:
            return "free"  # a bug: the consumer stops on it
        return {"plan": "free"}
''')}


class RoleEraser(AppWriter):
    """The application: takes the role of a random user away, a few times a second."""

    def __init__(self, users: Any) -> None:
        super().__init__(random.Random(29), pace=0.05)
        self.users = users

    def write(self) -> bool:
        user = self.rng.randrange(3000)
        if user % 100 == 7:  # those fail: they are dead letters once, not again
            return False
        self.users.update_one({"_id": user}, {"$unset": {"role": ""}})
        return True


class Prometheus:
    """The real Prometheus, scraping ``targets`` every second, with its HTTP API."""

    def __init__(self, binary: Path, home: Path, targets: list[int]) -> None:
        self.port = free_port()
        config = home / "prometheus.yml"
        config.write_text(textwrap.dedent(f"""\
            global: {{scrape_interval: 1s, scrape_timeout: 1s}}
            scrape_configs:
              - job_name: cdc-migrator
                static_configs:
                  - targets: {json.dumps([f"127.0.0.1:{p}" for p in targets])}
            """))
        self.log = home / "prometheus.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(binary), f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT)
        self.started = time.time()

    def api(self, path: str, **params: Any) -> Any:
        assert self.proc.poll() is None, self.log.read_text()
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                return json.load(reply)["data"]
        except OSError:
            return None

    def values(self, query: str) -> list[float]:
        """Every value ``query`` had since Prometheus started, each second (NaN left out)."""
        data = self.api("/api/v1/query_range", query=query, start=self.started,
                        end=time.time(), step=1)
        if data is None:
            return []
        return [float(v) for series in data["result"] for _, v in series["values"]
                if v != "NaN"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def test_every_panel_of_the_dashboard_shows_data_of_a_running_pipeline(db, settings,
                                                                      tmp_path, go_tool):
    binary = go_tool("prometheus")
    write_transforms(tmp_path, settings, TRANSFORMS)
    db.users.insert_many([{"_id": i} for i in range(3000)])
    db.accounts.insert_many([{"_id": i} for i in range(50)])
    for name in ("picky_role", "add_plan"):
        arm(settings, api.load(settings, name))
    api.throttle(settings, "picky_role", rate=300)  # a backfill of some seconds: its ETA
    # A consumer that stops on a document: the "Pieces stopped" panel.
    assert run_cli("backfill", "add_plan", "-q", settings=settings).returncode == 0
    assert run_cli("consume", "add_plan", "-q", settings=settings).returncode == 1  # exit 1: README

    writer = RoleEraser(db.users)
    with Service(settings, "tail", "picky_role", "add_plan") as tail, \
            Service(settings, "consume", "picky_role") as consumer, \
            Service(settings, "backfill", "picky_role") as backfill:
        prometheus = Prometheus(binary, tmp_path, [tail.port, consumer.port, backfill.port])
        writer.start()
        try:
            missing: list[tuple[str, str]] = []

            def all_answered() -> bool:
                missing[:] = [(t, q) for t, q in queries() if not prometheus.values(q)]
                return not missing

            wait_for(all_answered, timeout=120, interval=1,
                     what=lambda: f"data for every panel (none yet for {missing})")
            assert backfill.wait() == 0, backfill.log
            panel: dict[str, str] = {}  # each panel's first query
            for title, query in queries():
                panel.setdefault(title, query)
            done = wait_for(lambda: 1.0 in prometheus.values(panel["Backfill progress"]),
                            what="the backfill's progress reaching 100%")
            # The users whose _id ends in 07, each dead-lettered once (throttled too).
            letters = wait_for(lambda: 30.0 in (v := prometheus.values(panel["Dead letters"]))
                               and v, what="the 30 dead letters")
            stopped = prometheus.api("/api/v1/query", query=panel["Pieces stopped"])
            latency = prometheus.values(panel["Change to applied"])
        finally:
            writer.finish()
            prometheus.stop()

    # The data is the pipeline's: a few panels read back.
    assert done
    assert max(letters) == 30
    assert [s["metric"] for s in stopped["result"]] == [
        {"migration": "add_plan", "component": "consumer", "reason": "invalid_patch"}]
    assert latency and all(0 <= v < 60 for v in latency), latency
