"""`make demo`: a zero-downtime migration end to end on the local services.

Seeds the demo data, migrates the small `smallConfig` collection with `apply` (the shortcut
without Kafka), then for `users` takes a census of its documents (shapes, counts, what the
transform does to each) before any write, starts the always-on `tail` and `consume` as separate
processes, runs the backfill while an application thread keeps inserting, updating and deleting
users, shows a cutover refused while work is outstanding, then drains, verifies and cuts over.

It runs the `cdc-migrator` command installed beside the Python that runs it, and imports the
package from there: `make demo` uses the checkout's virtual environment, the install test
(tests/test_install.py) a wheel installed outside the checkout. Environment:
CDC_MIGRATOR_MONGODB_URI and CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS (or the test suite's
MONGODB_URI and KAFKA_BOOTSTRAP_SERVERS), CDC_MIGRATOR_TRANSFORMS (default: the checkout's
transforms/), DEMO_USERS (30000), DEMO_RATE (backfill documents per second, 6000).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pymongo

from cdc_migrator import api
from cdc_migrator.base.settings import Settings
from cdc_migrator.demo_data import seed

ROOT = Path(__file__).resolve().parent.parent
NAME = "add_default_role"
SMALL = "backfill_small_config"
TRANSFORMS = Path(os.environ.get("CDC_MIGRATOR_TRANSFORMS") or ROOT / "transforms")
BASE = os.environ.get("CDC_MIGRATOR_MONGODB_URI") or os.environ.get(
    "MONGODB_URI", "mongodb://127.0.0.1:27017/app?directConnection=true")
URI = BASE.split("://", 1)[0] + "://" + BASE.split("://", 1)[1].split("/", 1)[0] + \
    "/cdc_demo?directConnection=true"
KAFKA = os.environ.get("CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS") or os.environ.get(
    "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
USERS = int(os.environ.get("DEMO_USERS", "30000"))
RATE = os.environ.get("DEMO_RATE", "6000")
# A topic of its own per run: a reset keeps the old topic, whose events a new group would
# replay from the start (harmless, since apply is idempotent, but slow for a demo).
PREFIX = f"cdc-demo-{int(time.time())}"
ENV = dict(os.environ, CDC_MIGRATOR_MONGODB_URI=URI, CDC_MIGRATOR_KAFKA_BOOTSTRAP_SERVERS=KAFKA,
           CDC_MIGRATOR_TRANSFORMS=str(TRANSFORMS), CDC_MIGRATOR_TOPIC_PREFIX=PREFIX)
# The command installed with the package, as a user runs it.
COMMAND = [str(Path(sys.executable).with_name("cdc-migrator"))]


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def cli(*args: str, check: bool = True) -> int:
    print("$ cdc-migrator " + " ".join(args), flush=True)
    code = subprocess.call([*COMMAND, *args], env=ENV)
    if check and code != 0:
        sys.exit(f"demo: `cdc-migrator {' '.join(args)}` exited {code}")
    return code


SPAWNED: list[subprocess.Popen] = []


def spawn(*args: str) -> subprocess.Popen:
    print("$ cdc-migrator " + " ".join(args) + " &", flush=True)
    proc = subprocess.Popen([*COMMAND, *args], env=ENV)
    SPAWNED.append(proc)
    return proc


class Application(threading.Thread):
    """Inserts users in the old shape, resets roles, deletes users: the live writes."""

    def __init__(self, db) -> None:
        super().__init__(daemon=True)
        self.db, self.stop, self.writes = db, threading.Event(), 0
        self.rng = random.Random(1)

    def run(self) -> None:
        users = self.db.users
        while not self.stop.is_set():
            roll = self.rng.random()
            if roll < 0.5:
                users.insert_one({"name": f"new-{self.writes}", "email": f"n{self.writes}@x"})
            elif roll < 0.9:
                users.update_one({"_id": self.rng.choice(self.ids)},
                                 {"$set": {"role": None}})
            else:
                users.delete_one({"_id": self.rng.choice(self.ids)})
            self.writes += 1
            time.sleep(0.004)


def main() -> None:
    settings = Settings(mongodb_uri=URI, kafka_bootstrap_servers=KAFKA,
                        transforms=TRANSFORMS, topic_prefix=PREFIX)
    db = pymongo.MongoClient(URI)["cdc_demo"]
    step(f"seeding {USERS:,} users in cdc_demo.users (some without role, some admins)")
    db.client.drop_database("cdc_demo")
    seed(db, n_users=USERS, seed=1)
    api.reset(settings, NAME)
    api.reset(settings, SMALL)

    step("a small collection: smallConfig migrated in one process with `apply`, no Kafka")
    cli("apply", SMALL)
    cli("verify", SMALL)

    step("census, before any write: every kind of user, counted, and what the migration "
         "does to each kind")
    cli("census", NAME)

    step("dry run: what the migration would do to the first documents")
    cli("apply", NAME, "--dry-run", "--batch-size", "5")

    step("the always-on deployment: tail and consume as separate processes")
    tail = spawn("tail", NAME)
    consume = spawn("consume", NAME)
    deadline = time.monotonic() + 60
    while not (db.cdc_migrator_state.find_one({"_id": NAME}) or {}).get("tail"):
        if time.monotonic() > deadline:
            sys.exit("demo: the tailer did not arm change capture within 60 s")
        time.sleep(0.2)

    app = Application(db)
    app.ids = [d["_id"] for d in db.users.find({}, {"_id": 1})]
    app.start()
    step("backfill (rate-capped so the application's writes interleave with it)")
    backfill = spawn("backfill", NAME, "--rate", RATE)
    time.sleep(2)
    step("cutover while the backfill runs and the application writes: it must refuse")
    cli("cutover", NAME, "--timeout", "3s", check=False)
    if backfill.wait() != 0:
        sys.exit("demo: backfill failed")
    time.sleep(2)
    app.stop.set()
    app.join()
    print(f"application made {app.writes:,} writes during the migration window")

    step("status: waiting for the consumer to drain the topic")
    deadline = time.monotonic() + 300
    while True:
        found = api.status(settings, NAME)[0]
        if found.get("lag", {}).get("total", 1) == 0 and \
                (found.get("tail") or {}).get("seconds_since_heartbeat", 99) < 2:
            break
        if time.monotonic() > deadline:
            sys.exit("demo: the topic did not drain within 300 s")
        time.sleep(1)
    cli("status", NAME)

    step("verify and cutover")
    cli("verify", NAME)
    cli("cutover", NAME, "--timeout", "60s")
    cli("status", NAME)
    for proc in (tail, consume):
        proc.terminate()
    for proc in (tail, consume):
        proc.wait(timeout=60)
    step("done: every user has a role, including the ones written during the migration")


if __name__ == "__main__":
    try:
        main()
    finally:  # never leave the always-on processes behind, also when a step failed
        for leftover in SPAWNED:
            if leftover.poll() is None:
                leftover.terminate()
                leftover.wait(timeout=60)
