"""Wait until the local services answer, then print their connection strings.

MongoDB is ready when it answers `hello` and a change stream sees an insert; Kafka is ready when
it acknowledges a produce. Used by scripts/services.sh; exits 1 after --timeout seconds.
"""

from __future__ import annotations

import argparse
import sys
import time


def mongo_ready(uri: str) -> None:
    import pymongo

    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=1000)
    try:
        client.admin.command("hello")
        probe = client.get_database("cdc_migrator_probe").probe
        with probe.watch(max_await_time_ms=200) as stream:
            probe.insert_one({"at": time.time()})
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if stream.try_next() is not None:
                    return
            raise RuntimeError("change stream saw no event")
    finally:
        client.close()


def kafka_ready(bootstrap: str) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        try:
            admin.create_topics([NewTopic("cdc-migrator-probe", 1, 1)])
        except TopicAlreadyExistsError:
            pass
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=5000)
    try:
        producer.send("cdc-migrator-probe", b"ready").get(timeout=10)
    finally:
        producer.close()


def wait(name: str, check, target: str, deadline: float, logs: str) -> bool:
    last = None
    while time.monotonic() < deadline:
        try:
            check(target)
            return True
        except Exception as exc:  # any failure means: not ready yet
            last = exc
            time.sleep(0.5)
    print(f"services: {name} at {target} not ready: {last} (logs in {logs})", file=sys.stderr)
    return False


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mongo", required=True)
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--logs", default=".services")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    ok = wait("MongoDB", mongo_ready, args.mongo, deadline, args.logs)
    ok = ok and wait("Kafka", kafka_ready, args.kafka, deadline, args.logs)
    if not ok:
        return 1
    print(f"MONGODB_URI={args.mongo}")
    print(f"KAFKA_BOOTSTRAP_SERVERS={args.kafka}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
