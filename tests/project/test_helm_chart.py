"""The Helm chart (deploy/helm/cdc-migrator), rendered by a real helm and read back in Python.

`helm lint` and `helm template` run with several sets of values (helm built by
scripts/tools.sh); the manifests are then checked for what a deployment relies on: one tailer,
consumers whose pod names are their instance ids, probes on the health endpoints, non-root
containers on a read-only root filesystem, credentials from Secrets only, and command lines the
tool accepts (each container's flags and variables parsed by the tool's own command line). No
cluster runs here: what Kubernetes itself would do with the manifests is not tested.
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from cdc_migrator.base.settings import Settings
from cdc_migrator.cli import _sourced, cli

from ..harness import ROOT

CHART = ROOT / "deploy" / "helm" / "cdc-migrator"
RELEASE = "mig"
NAMESPACE = "data"

MINIMAL: dict[str, Any] = {
    "kafka": {"bootstrapServers": "kafka-0.kafka:9092,kafka-1.kafka:9092"},
    "mongodb": {"uriSecret": {"name": "app-mongodb"}},
}
# Every option of the chart at once.
FULL: dict[str, Any] = {
    "image": {"repository": "registry.example.com/cdc-migrator", "tag": "1.4.0"},
    "migrationNames": ["add_default_role", "split_full_name"],
    "migrations": {"files": {"add_default_role.py": "# a migration\n"}},
    "schemas": {"files": {"users.contract.json": "{}\n"}},
    "mongodb": {"uriSecret": {"name": "app-mongodb", "key": "uri"}, "database": "app",
                "tls": {"secretName": "mongodb-tls", "caKey": "ca.pem",
                        "certKeyKey": "client.pem"}},
    "kafka": {"bootstrapServers": "b-1.kafka.example.com:9096",
              "securityProtocol": "SASL_SSL",
              "sasl": {"mechanism": "SCRAM-SHA-512", "username": "cdc-migrator",
                       "passwordSecret": {"name": "kafka-credentials", "key": "password"}},
              "tls": {"secretName": "kafka-tls", "caKey": "ca.crt", "certKey": "tls.crt",
                      "keyKey": "tls.key",
                      "keyPasswordSecret": {"name": "kafka-credentials", "key": "key-password"}}},
    "env": {"CDC_MIGRATOR_PARTITIONS": 12, "CDC_MIGRATOR_TOPIC_PREFIX": "cdc"},
    "configFile": "[kafka]\nclient_id = \"cdc-migrator\"\n",
    "metrics": {"port": 9200, "serviceMonitor": {"enabled": True,
                                                 "labels": {"release": "prometheus"}}},
    "tail": {"onHistoryLost": "rebackfill", "env": {"CDC_MIGRATOR_RETRY_DEADLINE": "600"}},
    "consume": {"replicas": 5, "env": {"CDC_MIGRATOR_MAX_WRITE_LATENCY": "250"}},
    "backfills": [{"migration": "add_default_role", "parallelism": 3, "workers": 2,
                   "rate": 500, "batchSize": 2000},
                  {"migration": "split_full_name"}],
    "backfill": {"ttlSecondsAfterFinished": 86400,
                 "env": {"CDC_MIGRATOR_BACKFILL_RANGES": "64"}},
}
# Migrations from ConfigMaps of the user's own, the consumers only.
EXISTING: dict[str, Any] = {
    **MINIMAL,
    "migrations": {"configMap": "our-migrations"},
    "schemas": {"configMap": "our-schemas"},
    "tail": {"enabled": False},
}
VALUE_SETS = {"minimal": MINIMAL, "full": FULL, "existing-configmaps": EXISTING}
SECRET_SETTINGS = {"CDC_MIGRATOR_MONGODB_URI", "CDC_MIGRATOR_KAFKA_SASL_PASSWORD",
                   "CDC_MIGRATOR_KAFKA_SSL_PASSWORD"}


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def _helm(helm: Path, tmp_path: Path, *args: str,
          values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    home = {f"HELM_{what}_HOME": str(tmp_path / f"helm-{what.lower()}")
            for what in ("CACHE", "CONFIG", "DATA")}  # helm writes nothing to $HOME
    return subprocess.run([str(helm), *args, str(CHART), "-f", str(path)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **home})


@pytest.fixture
def render(go_tool, tmp_path):
    """``render(values)``: the manifests `helm template` makes of ``values``."""
    helm = go_tool("helm")

    def manifests(values: dict[str, Any]) -> list[dict[str, Any]]:
        done = _helm(helm, tmp_path, "template", RELEASE, "--namespace", NAMESPACE,
                     values=values)
        assert done.returncode == 0, done.stderr
        return [m for m in yaml.safe_load_all(done.stdout) if m]
    return manifests


def of_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def workloads(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] in ("Deployment", "StatefulSet", "Job")]


def containers(manifests: list[dict[str, Any]]) -> list[tuple[dict, dict, dict]]:
    """(workload, pod spec, container) for every container the chart runs."""
    return [(w, w["spec"]["template"]["spec"], c) for w in workloads(manifests)
            for c in w["spec"]["template"]["spec"]["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def component(workload: dict[str, Any]) -> str:
    return workload["metadata"]["labels"]["app.kubernetes.io/component"]


# ----------------------------------------------------------------------- lint and refusals

@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_passes_the_chart_with_each_set_of_values(go_tool, tmp_path, values):
    done = _helm(go_tool("helm"), tmp_path, "lint", "--strict", values=values)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


REFUSED = {
    "no Kafka": ({"mongodb": {"uriSecret": {"name": "s"}}}, "kafka.bootstrapServers"),
    "no MongoDB Secret": ({"kafka": {"bootstrapServers": "k:9092"}}, "mongodb.uriSecret.name"),
    "a misspelt value": (merged(MINIMAL, {"consume": {"replica": 3}}),
                         "additional properties 'replica' not allowed"),
    "an unknown protocol": (merged(MINIMAL, {"kafka": {"securityProtocol": "SASL"}}),
                            "/kafka/securityProtocol"),
    "a backfill naming no migration": ({**MINIMAL, "backfills": [{"workers": 2}]},
                                       "missing property 'migration'"),
}


@pytest.mark.parametrize("values, message", REFUSED.values(), ids=REFUSED.keys())
def test_values_the_chart_cannot_run_with_are_refused_naming_the_value(go_tool, tmp_path,
                                                                        values, message):
    done = _helm(go_tool("helm"), tmp_path, "template", RELEASE, values=values)

    assert done.returncode == 1
    assert message in done.stderr, done.stderr


# ------------------------------------------------------------------------------ the pieces

def test_the_tailer_is_one_replica_never_two_at_once(render):
    (tail,) = of_kind(render(FULL), "Deployment")

    assert component(tail) == "tail"
    assert tail["spec"]["replicas"] == 1
    assert tail["spec"]["strategy"] == {"type": "Recreate"}  # the old pod stops first
    (container,) = tail["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["tail", "--metrics-port", "9200", "--on-history-lost",
                                 "rebackfill", "add_default_role", "split_full_name"]


def test_consumers_are_a_statefulset_whose_pod_names_are_their_instance_ids(render):
    manifests = render(FULL)
    (consume,) = of_kind(manifests, "StatefulSet")
    (container,) = consume["spec"]["template"]["spec"]["containers"]
    services = {s["metadata"]["name"]: s for s in of_kind(manifests, "Service")}

    assert component(consume) == "consume"
    assert consume["spec"]["replicas"] == 5
    assert env_of(container)["CDC_MIGRATOR_INSTANCE_ID"] == {
        "name": "CDC_MIGRATOR_INSTANCE_ID",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    governing = services[consume["spec"]["serviceName"]]
    assert governing["spec"]["clusterIP"] == "None"
    assert governing["spec"]["selector"].items() <= consume["spec"]["template"]["metadata"][
        "labels"].items()
    assert not [d for d in of_kind(manifests, "Deployment") if component(d) == "consume"]


def test_each_backfill_is_a_job_whose_pods_all_finish_together(render):
    jobs = {j["metadata"]["labels"]["cdc-migrator.io/migration"]: j
            for j in of_kind(render(FULL), "Job")}

    assert sorted(jobs) == ["add_default_role", "split_full_name"]
    first, second = jobs["add_default_role"]["spec"], jobs["split_full_name"]["spec"]
    assert (first["parallelism"], first["completions"]) == (3, 3)
    assert (second["parallelism"], second["completions"]) == (1, 1)
    assert first["ttlSecondsAfterFinished"] == 86400
    assert first["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert first["template"]["spec"]["containers"][0]["args"] == [
        "backfill", "add_default_role", "--workers", "2", "--rate", "500", "--batch-size",
        "2000", "--metrics-port", "9200"]
    assert second["template"]["spec"]["containers"][0]["args"] == [
        "backfill", "split_full_name", "--metrics-port", "9200"]


def test_a_backfill_job_is_replaced_when_its_pod_template_changes_and_kept_otherwise(render):
    def job_names(values: dict[str, Any]) -> list[str]:
        return [j["metadata"]["name"] for j in of_kind(render(values), "Job")]

    before = job_names(FULL)
    again = job_names(FULL)
    new_image = job_names(merged(FULL, {"image": {"tag": "1.4.1"}}))

    # A Job's pod template is immutable: a changed one must be a new Job (a new name).
    assert again == before
    assert len(set(new_image) | set(before)) == 4
    assert all(len(name) <= 63 for name in before)


# ------------------------------------------------------------------------ health and safety

@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_tail_and_consume_are_probed_on_the_health_endpoints_of_their_metrics_port(render,
                                                                                   values):
    port = values.get("metrics", {}).get("port", 9100)
    probed = 0
    for workload, _, container in containers(render(values)):
        if component(workload) == "backfill":
            assert "livenessProbe" not in container and "readinessProbe" not in container
            continue
        (declared,) = container["ports"]
        assert declared == {"name": "metrics", "containerPort": port, "protocol": "TCP"}
        args = container["args"]
        assert args[args.index("--metrics-port") + 1] == str(port)
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        probed += 1
    assert probed == (1 if values is EXISTING else 2)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_container_runs_as_non_root_on_a_read_only_root_filesystem(render, values):
    manifests = render(values)
    (account,) = of_kind(manifests, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False

    for _, pod, container in containers(manifests):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == account["metadata"]["name"]
        assert container["securityContext"] == {
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}}
        # The one writable place: /tmp, an emptyDir.
        volumes = {v["name"]: v for v in pod["volumes"]}
        (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert "emptyDir" in volumes[tmp["name"]]
        assert all(m.get("readOnly") for m in container["volumeMounts"] if m is not tmp)
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()


def test_credentials_come_from_secrets_and_tls_files_from_mounted_secrets(render):
    for _, pod, container in containers(render(FULL)):
        env = env_of(container)
        refs = {name: env[name]["valueFrom"]["secretKeyRef"] for name in SECRET_SETTINGS}
        assert refs == {"CDC_MIGRATOR_MONGODB_URI": {"name": "app-mongodb", "key": "uri"},
                        "CDC_MIGRATOR_KAFKA_SASL_PASSWORD": {"name": "kafka-credentials",
                                                             "key": "password"},
                        "CDC_MIGRATOR_KAFKA_SSL_PASSWORD": {"name": "kafka-credentials",
                                                            "key": "key-password"}}
        assert not any("value" in env[name] for name in SECRET_SETTINGS)

        files = {name: entry["value"] for name, entry in env.items() if name in (
            "CDC_MIGRATOR_KAFKA_SSL_CAFILE", "CDC_MIGRATOR_KAFKA_SSL_CERTFILE",
            "CDC_MIGRATOR_KAFKA_SSL_KEYFILE", "CDC_MIGRATOR_MONGO_TLS_CA_FILE",
            "CDC_MIGRATOR_MONGO_TLS_CERT_KEY_FILE")}
        assert len(files) == 5
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        mounted = {Path(m["mountPath"]): secrets[m["name"]] for m in container["volumeMounts"]
                   if m["name"] in secrets}
        assert {(mounted[Path(path).parent], Path(path).name) for path in files.values()} == {
            ("kafka-tls", "ca.crt"), ("kafka-tls", "tls.crt"), ("kafka-tls", "tls.key"),
            ("mongodb-tls", "ca.pem"), ("mongodb-tls", "client.pem")}


def test_no_secret_is_set_when_none_is_named(render):
    for _, _, container in containers(render(MINIMAL)):
        env = env_of(container)
        assert env["CDC_MIGRATOR_MONGODB_URI"]["valueFrom"]["secretKeyRef"] == {
            "name": "app-mongodb", "key": "mongodb-uri"}
        assert not (SECRET_SETTINGS - {"CDC_MIGRATOR_MONGODB_URI"}) & env.keys()
        assert not [n for n in env if "_TLS_" in n or "_SSL_" in n]


# ------------------------------------------------------------- the tool accepts what it gets

def _mounted(manifests: list[dict[str, Any]], pod: dict[str, Any], container: dict[str, Any],
             path: str) -> str:
    """What the file at ``path`` holds in the container: a key of a ConfigMap the chart made,
    or a placeholder for a Secret's."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if Path(path).parent == Path(m["mountPath"])]
    volume = volumes[mount["name"]]
    if "configMap" in volume:
        (data,) = [m["data"] for m in of_kind(manifests, "ConfigMap")
                   if m["metadata"]["name"] == volume["configMap"]["name"]]
        return str(data[Path(path).name])
    assert "secret" in volume, volume
    return "mounted from a Secret\n"


def _command_line(manifests: list[dict[str, Any]], workload: dict[str, Any], files: Path
                  ) -> tuple[click.Command, list[str], dict[str, str]]:
    """The command, arguments and environment of the workload's container as its pod would
    have them: a Secret's value is a placeholder, a field its pod's name, a mounted file a
    copy under ``files``."""
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = cli.commands[container["args"][0]]
    env = {}
    for name, entry in env_of(container).items():
        source = entry.get("valueFrom", {})
        if "secretKeyRef" in source:
            value = ("mongodb://u:p@db-0/app" if name == "CDC_MIGRATOR_MONGODB_URI"
                     else f"secret from {source['secretKeyRef']['name']}")
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            value = f"{workload['metadata']['name']}-0"
        else:
            value = entry["value"]
        if value.startswith("/etc/cdc-migrator/"):
            copied = files / value.removeprefix("/")
            copied.parent.mkdir(parents=True, exist_ok=True)
            copied.write_text(_mounted(manifests, pod, container, value))
            value = str(copied)
        env[name] = value
    return command, container["args"][1:], env


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_flag_and_variable_the_chart_passes_is_one_the_command_takes(
        render, values, tmp_path, monkeypatch):
    manifests = render(values)
    for workload, _, container in containers(manifests):
        command, args, env = _command_line(manifests, workload, tmp_path)
        options = {opt for p in command.params for opt in p.opts}
        variables = {name for p in command.params
                     for name in ([p.envvar] if isinstance(p.envvar, str) else p.envvar or [])}

        deprecated = {name for spec in Settings.table().values() for name in spec.old_env}
        assert {a for a in args if a.startswith("-")} <= options, container["args"]
        assert env.keys() <= variables, sorted(env.keys() - variables)
        assert not env.keys() & deprecated, sorted(env.keys() & deprecated)
        # Parsed by the tool's own command line, as the pod would start it.
        for name in [n for n in os.environ if n in variables]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        params = command.make_context(command.name, list(args)).params
        if command.name in ("tail", "consume"):
            assert params["names"] == tuple(values.get("migrationNames", ()))
        if command.name == "consume":
            assert params["instance_id"] == f"{workload['metadata']['name']}-0"
        assert str(params["transforms"]) == "/app/transforms"


def test_the_settings_reach_every_command_with_their_values(render, tmp_path, monkeypatch):
    seen = set()
    manifests = render(FULL)
    for workload in workloads(manifests):
        command, args, env = _command_line(manifests, workload, tmp_path)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        context = command.make_context(command.name, list(args))
        params = context.params
        seen.add(command.name)

        assert params["kafka_bootstrap_servers"] == "b-1.kafka.example.com:9096"
        assert params["kafka_security_protocol"] == "SASL_SSL"
        assert params["kafka_sasl_mechanism"] == "SCRAM-SHA-512"
        assert params["database"] == "app"
        # Click passes a value on as given; the table checks and converts it, from where it
        # came, as the command does (cli._settings_options).
        values = {name: params[name] for name in Settings.table() if name in params}
        settings = Settings.from_values(values, _sourced(context, values))
        assert settings.partitions == 12 and settings.topic_prefix == "cdc"
        assert params["log_format"] == "json"
        # The configuration file, for the client options that have no variable.
        assert context.meta["cdc_migrator.config"].kafka == {"client_id": "cdc-migrator"}
    assert seen == {"tail", "consume", "backfill"}


def test_backfill_jobs_serve_metrics_with_a_flag_backfill_takes(render):
    manifests = render(FULL)  # backfill.metrics is on by default
    backfills = [c for w, _, c in containers(manifests) if component(w) == "backfill"]
    scraped = [s for s in of_kind(manifests, "Service")
               if s["spec"]["selector"]["app.kubernetes.io/component"] == "backfill"]
    options = {opt for p in cli.commands["backfill"].params for opt in p.opts}

    assert len(backfills) == 2 and len(scraped) == 1
    assert all("--metrics-port" in c["args"] and c["ports"][0]["name"] == "metrics"
               for c in backfills)
    assert "--metrics-port" in options


# --------------------------------------------------------------- migrations, scraping

def test_migrations_and_schemas_are_mounted_where_the_tool_reads_them(render):
    manifests = render(FULL)
    maps = {m["metadata"]["name"]: m["data"] for m in of_kind(manifests, "ConfigMap")}
    for _, pod, container in containers(manifests):
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        assert env_of(container)["CDC_MIGRATOR_TRANSFORMS"]["value"] == "/app/transforms"
        # schemas/ beside the transforms directory: where contract schemas are looked up.
        assert maps[mounts["/app/transforms"]["configMap"]["name"]] == FULL["migrations"]["files"]
        assert maps[mounts["/app/schemas"]["configMap"]["name"]] == FULL["schemas"]["files"]


def test_a_changed_migration_file_rolls_the_always_on_pods(render):
    def checksums(values: dict[str, Any]) -> list[str]:
        return [w["spec"]["template"]["metadata"]["annotations"]["checksum/mounted"]
                for w in workloads(render(values)) if component(w) != "backfill"]

    before = checksums(FULL)
    after = checksums(merged(FULL, {"migrations": {"files": {
        "add_default_role.py": "# a migration, edited\n"}}}))

    assert len(before) == 2 and not set(before) & set(after)


def test_migrations_from_configmaps_of_ones_own_or_from_the_image(render):
    own = render(EXISTING)
    image = render(MINIMAL)

    assert not of_kind(own, "ConfigMap")
    for _, pod, _ in containers(own):
        names = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
        assert names == {"our-migrations", "our-schemas"}
    for _, pod, container in containers(image):
        assert [v["name"] for v in pod["volumes"]] == ["tmp"]
        assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]


def test_the_service_monitor_scrapes_the_metrics_port_of_tail_consume_and_backfills(render):
    manifests = render(FULL)
    (monitor,) = of_kind(manifests, "ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    scraped = [s for s in of_kind(manifests, "Service")
               if wanted.items() <= s["metadata"]["labels"].items()]

    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    pods = {component(w): w["spec"]["template"]["metadata"]["labels"]
            for w in workloads(manifests)}
    assert sorted(s["spec"]["selector"]["app.kubernetes.io/component"] for s in scraped) == [
        "backfill", "consume", "tail"]
    for service in scraped:
        (port,) = service["spec"]["ports"]
        assert port["name"] == "metrics" and port["targetPort"] == "metrics"
        assert service["spec"]["selector"].items() <= pods[
            service["spec"]["selector"]["app.kubernetes.io/component"]].items()
    assert not of_kind(render(MINIMAL), "ServiceMonitor")
