"""Offline checks of the Kubernetes manifests (infra/k8s/), without a cluster.

Each document is deserialised into the official kubernetes client's model for its kind and
serialised back: a field the API does not know, a misplaced one or a wrong type does not
survive the round trip. Then what must agree with the code: the image, the Bytewax command
line (-i from the pod ordinal, -a with one headless-Service address per replica, -r on the
per-pod volume), probe paths and ports against the flow's health server, environment names
against connectors/settings.py, the partition arithmetic documented in the README, and a
Secret template without values.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient
from pydantic import BaseModel

from connectors.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "infra" / "k8s"
NAMESPACE = "predictive-maintenance"
ENTRYPOINT_ONLY = {"PM_RECOVERY_PARTITIONS"}  # read by infra/docker/flow-entrypoint.sh
MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Secret"): "V1Secret",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "StatefulSet"): "V1StatefulSet",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("batch/v1", "Job"): "V1Job",
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) of every manifest except the kustomization."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    (doc,) = [
        d for _, d in documents() if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    return doc


def containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(kind, pod spec, container) of every workload."""
    out = []
    for _, doc in documents():
        if doc["kind"] in ("StatefulSet", "Deployment", "Job"):
            pod = doc["spec"]["template"]["spec"]
            out += [(doc["kind"], pod, c) for c in pod["containers"]]
    return out


def config() -> dict[str, str]:
    return dict(one("ConfigMap", "pm-config")["data"])


def flow() -> tuple[dict[str, Any], dict[str, Any]]:
    sts = one("StatefulSet", "pm-flow")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    return sts, container


def env_values(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of a container's args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], a) for a in args]


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            p
            for k in sorted(set(a) | set(b))
            for p in (
                [f"{path}/{k}"] if k not in a or k not in b else _diff(a[k], b[k], f"{path}/{k}")
            )
        ]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            p
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for p in _diff(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


# --- the API schema -----------------------------------------------------------------------


def test_every_document_round_trips_through_the_kubernetes_models() -> None:
    api = ApiClient()
    kinds = []
    for name, doc in documents():
        model = MODELS.get((doc["apiVersion"], doc["kind"]))
        assert model, f"{name}: no model for {doc['apiVersion']} {doc['kind']}"
        obj = api._ApiClient__deserialize(doc, model)  # type: ignore[attr-defined]
        back = api.sanitize_for_serialization(obj)
        assert _diff(doc, back) == [], f"{name}: fields lost or changed in {model}"
        kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(
        ["Namespace", "ConfigMap", "Secret", "Service", "StatefulSet", "Job", "Deployment"]
    )


def test_the_round_trip_catches_a_misspelt_field() -> None:
    api = ApiClient()
    sts, _ = flow()
    bad = json.loads(json.dumps(sts))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    back = api.sanitize_for_serialization(api._ApiClient__deserialize(bad, "V1StatefulSet"))  # type: ignore[attr-defined]
    assert _diff(bad, back) == ["/spec/template/spec/containers[0]/readinesProbe"]


def test_kustomization_lists_the_long_running_parts_and_no_secret() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources = kust["resources"]
    assert all((K8S / r).is_file() for r in resources)
    assert "secret.example.yaml" not in resources
    assert {
        "namespace.yaml",
        "configmap.yaml",
        "flow-service.yaml",
        "flow-statefulset.yaml",
    } == set(resources)


def test_everything_is_in_the_namespace() -> None:
    assert one("Namespace")["metadata"]["name"] == NAMESPACE
    for name, doc in documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, name


# --- the flow StatefulSet -------------------------------------------------------------------


def test_flow_runs_one_bytewax_process_per_pod_with_its_ordinal_and_the_peers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bytewax.run import _parse_args

    sts, c = flow()
    svc = one("Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert sts["spec"]["podManagementPolicy"] == "Parallel"

    env = env_values(c)
    assert env["POD_INDEX"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }
    replicas = sts["spec"]["replicas"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    svc_ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert svc_ports["cluster"] == (ports["cluster"], "cluster")
    peers = [
        f"{sts['metadata']['name']}-{i}.{svc['metadata']['name']}:{ports['cluster']}"
        for i in range(replicas)
    ]
    assert env["FLOW_ADDRESSES"].split(";") == peers, "one address per replica, in ordinal order"

    argv = expand(c["args"], {"POD_INDEX": "1", "FLOW_ADDRESSES": env["FLOW_ADDRESSES"]})
    assert argv[:3] == ["python", "-m", "bytewax.run"]
    for var in [v for v in os.environ if v.startswith("BYTEWAX_")]:
        monkeypatch.delenv(var)
    monkeypatch.setattr(sys, "argv", ["bytewax.run", *argv[3:]])
    args = _parse_args()  # Bytewax's own command line, scaling options included
    assert args.import_str == "flows.main"
    assert args.process_id == 1 and args.addresses == env["FLOW_ADDRESSES"]
    assert args.workers_per_process in (None, 1), "one worker per process (the GIL)"
    assert args.snapshot_interval is not None and args.backup_interval is not None
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == str(args.recovery_directory)
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_probes_hit_the_flow_health_server_on_the_metrics_port() -> None:
    from connectors.health import HealthServer

    _, c = flow()
    cfg = config()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == int(cfg["PM_METRICS_PORT"])
    assert cfg["PM_METRICS_ADDRESS"] == "0.0.0.0", "the kubelet probes the pod IP"
    probes = {k: c[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {k: (p["path"], p["port"]) for k, p in probes.items()} == {
        "startupProbe": ("/healthz", "metrics"),
        "livenessProbe": ("/healthz", "metrics"),
        "readinessProbe": ("/readyz", "metrics"),
    }
    server = HealthServer("127.0.0.1", 0).start()
    server.add_check("test", lambda: (False, "not ready on purpose"))
    try:
        for path, expected in (("/healthz", 200), ("/readyz", 503)):
            try:
                status = urllib.request.urlopen(
                    f"http://127.0.0.1:{server.port}{path}", timeout=5
                ).status
            except urllib.error.HTTPError as exc:
                status = exc.code
            assert status == expected, path
    finally:
        server.close()
    annotations = flow()[0]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == cfg["PM_METRICS_PORT"]


def test_partitions_pods_and_recovery_partitions_agree() -> None:
    sts, _ = flow()
    cfg = config()
    pods = sts["spec"]["replicas"]
    workers = pods * 1  # -w is not set: one worker per process
    kafka_partitions = int(cfg["PM_KAFKA__INPUT_PARTITIONS"])
    recovery_partitions = int(cfg["PM_RECOVERY_PARTITIONS"])
    assert kafka_partitions % workers == 0, "Kafka partitions: a multiple of the total workers"
    assert recovery_partitions >= workers, "recovery partitions: at least the total workers"
    assert recovery_partitions % pods == 0, "recovery partitions: the same share on every pod"
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Kubernetes") :]
    for word in (
        "PM_KAFKA__INPUT_PARTITIONS",
        "PM_RECOVERY_PARTITIONS",
        "replicas",
        "FLOW_ADDRESSES",
    ):
        assert word in section, word


# --- images, settings, secrets ------------------------------------------------------------


def test_workloads_use_the_project_image_as_its_non_root_user() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"useradd [^\n]*--uid (\d+)", dockerfile)[1])  # type: ignore[index]
    workdir = re.findall(r"^WORKDIR (\S+)", dockerfile, re.M)[-1]
    found = containers()
    assert {k for k, _, _ in found} == {"StatefulSet", "Job", "Deployment"}
    for kind, pod, c in found:
        assert c["image"] == f"predictive-maintenance:{version}", kind
        assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsNonRoot"]
        if c["securityContext"].get("readOnlyRootFilesystem"):
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert "/tmp" in mounts, kind
            if kind != "Deployment":  # the simulator writes nothing
                assert workdir in mounts, f"{kind}: the working directory must be writable"


def _known_setting(var: str) -> bool:
    fields = Settings.model_fields
    head, _, nested = var[3:].lower().partition("__")
    if head not in fields:
        return False
    if not nested:
        return True
    section = fields[head].annotation
    return (
        isinstance(section, type)
        and issubclass(section, BaseModel)
        and nested in section.model_fields
    )


def test_environment_names_are_settings_and_build_valid_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = one("Secret")["stringData"]
    names = set(config()) | set(secret)
    for _, _, c in containers():
        names |= {n for n in env_values(c) if n.startswith("PM_")}
    unknown = {
        n for n in names - ENTRYPOINT_ONLY if not (n.startswith("PM_") and _known_setting(n))
    }
    assert unknown == set()
    assert all(n in (ROOT / "infra/docker/flow-entrypoint.sh").read_text() for n in ENTRYPOINT_ONLY)

    for name, value in {**config(), **secret}.items():
        if name not in ENTRYPOINT_ONLY:
            monkeypatch.setenv(name, value)
    s = load_settings()
    assert s.source == "kafka" and s.metrics_port == 9100 and s.metrics_address == "0.0.0.0"
    assert s.database_url is not None and s.redis_url is not None and len(s.apprise_urls) == 1


def test_the_secret_is_a_template_without_values() -> None:
    secrets = [(n, d) for n, d in documents() if d["kind"] == "Secret"]
    assert [n for n, _ in secrets] == ["secret.example.yaml"]
    data = secrets[0][1]
    assert "data" not in data  # base64 values would hide what they hold
    for key, value in data["stringData"].items():
        assert "CHANGE_ME" in value, f"{key} holds a value"
    for name, doc in documents():
        if doc["kind"] in ("ConfigMap", "StatefulSet", "Deployment", "Job"):
            text = json.dumps(doc).lower()
            assert "password" not in text and "secret_key" not in text, name
    _, c = flow()
    assert {"secretRef": {"name": data["metadata"]["name"]}} in c["envFrom"]


def test_trainer_and_simulator_commands_are_accepted() -> None:
    from connectors.simulator import build_parser as simulator_parser
    from models.train import build_parser as train_parser

    job = one("Job", "pm-trainer")
    (trainer,) = job["spec"]["template"]["spec"]["containers"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    targs = train_parser().parse_args(trainer["args"][3:])
    assert trainer["args"][:3] == ["python", "-m", "models.train"]
    mounts = {m["mountPath"] for m in trainer["volumeMounts"]}
    assert any(targs.out.startswith(m + "/") for m in mounts)
    assert not targs.no_mlflow and not targs.no_register

    dep = one("Deployment", "pm-simulator")
    (sim,) = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: config()[e["valueFrom"]["configMapKeyRef"]["key"]] for e in sim["env"]}
    argv = expand(sim["args"], env)
    assert argv[:3] == ["python", "-m", "connectors.simulator"]
    sargs = simulator_parser().parse_args(argv[3:])
    assert sargs.kafka == config()["PM_KAFKA_BROKERS"]
    assert sargs.topic == load_settings().kafka.input_topic
