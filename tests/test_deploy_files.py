"""Static checks of the deployment files (no Docker engine needed).

docker-compose.yml, Dockerfile, infra/docker/, infra/prometheus/ and infra/grafana/ cannot be
run here, so these tests check what can be checked without running them: the files parse,
names that must agree across files agree (services, settings, metric names, data source
uids, mounted paths, topics), and the entrypoint's logic runs against a stub `python`.
The dashboards' panels are checked in test_dashboards.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from connectors.settings import Settings, load_settings
from tests.promql import exported_series, metric_names, selector_labels

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
MLFLOW_DOCKERFILE = ROOT / "infra" / "docker" / "mlflow.Dockerfile"
ENTRYPOINT = ROOT / "infra" / "docker" / "flow-entrypoint.sh"
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
GRAFANA_DIR = ROOT / "infra" / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))

# Flow-service variables read by the entrypoint script, not by connectors.settings.
ENTRYPOINT_ONLY_VARS = {"PM_RECOVERY_PARTITIONS"}


# --- helpers -----------------------------------------------------------------------------

_VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
_INTERP = re.compile(
    r"\$(?:(?P<esc>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-style interpolation of every string in ``value`` (``$$`` is a literal ``$``).

    >>> interpolate({"a": ["${X:-d}", "$$Y", "${Z-}"]}, {"X": ""})
    {'a': ['d', '$Y', '']}
    """
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m["esc"]:
            return "$"
        name = m["name"] or m["bare"]
        op, arg, val = m["op"], m["arg"] or "", env.get(name)
        if op == ":-":
            return val if val else arg
        if op == "-":
            return val if val is not None else arg
        if op in (":?", "?"):
            if not val:
                raise ValueError(f"required variable {name}: {arg}")
            return val
        if op == ":+":
            return arg if val else ""
        if op == "+":
            return arg if val is not None else ""
        return val or ""

    return _INTERP.sub(sub, value)


def compose_text() -> str:
    return COMPOSE.read_text()


def compose_var_refs() -> list[tuple[str, str, str]]:
    """(name, operator, argument) of every ``${...}`` in the compose file's values."""
    strings = [s for s in walk(compose_raw()) if isinstance(s, str)]
    return [ref for s in strings for ref in _VAR_REF.findall(s.replace("$$", ""))]


def compose_raw() -> dict[str, Any]:
    data = yaml.safe_load(compose_text())
    assert isinstance(data, dict)
    return data


def compose() -> dict[str, Any]:
    """docker-compose.yml as compose would see it with an empty .env (all defaults)."""
    return interpolate(compose_raw(), {})


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of the volumes that are bind mounts of repo files."""
    out = []
    for vol in service.get("volumes", []):
        if isinstance(vol, dict):
            if vol.get("type") == "bind":
                out.append((vol["source"], vol["target"]))
            continue
        source, target = vol.split(":")[:2]
        if source.startswith((".", "/")):
            out.append((source, target))
    return out


def command_list(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    out = []
    for line in lines:
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def provisioned_datasources() -> dict[str, str]:
    """uid -> type of the provisioned Grafana data sources."""
    doc = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/datasources.yml").read_text())
    return {ds["uid"]: ds["type"] for ds in doc["datasources"]}


# --- docker-compose.yml ------------------------------------------------------------------


def test_compose_has_the_stack() -> None:
    assert set(services()) == {
        "kafka",
        "kafka-init",
        "timescaledb",
        "redis",
        "minio",
        "minio-init",
        "mlflow",
        "prometheus",
        "grafana",
        "flow",
        "trainer",
        "simulator",
    }
    assert "version" not in compose_raw(), "the top-level version key is obsolete"


def test_depends_on_names_existing_services_with_valid_conditions() -> None:
    svcs = services()
    for name, svc in svcs.items():
        for dep, condition in depends_on(svc).items():
            assert dep in svcs, f"{name} depends on missing service {dep}"
            assert dep != name
            if condition == "service_healthy":
                assert "healthcheck" in svcs[dep], f"{name} waits for {dep} health: no healthcheck"
            elif condition == "service_completed_successfully":
                assert svcs[dep].get("restart") == "no", f"{dep} is one-shot: restart must be no"
            else:
                assert condition == "service_started", f"{name}: unknown condition {condition}"
            assert not svcs[dep].get("profiles"), f"{name} depends on {dep}, which has a profile"


def test_flow_waits_for_healthy_infrastructure() -> None:
    deps = depends_on(services()["flow"])
    for infra in ("kafka", "timescaledb", "redis", "mlflow"):
        assert deps.get(infra) == "service_healthy", infra
    assert deps.get("kafka-init") == "service_completed_successfully"


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, svc in services().items():
        if svc.get("restart") in (None, "no") or svc.get("profiles"):
            continue
        if name == "simulator":  # a client: nothing waits for it
            continue
        assert "healthcheck" in svc, name


# What the third-party images ship, from their documentation (there is no Docker engine here
# to look inside them). A new image, or a health check that runs another program, must be
# added here with its source.
IMAGE_PROGRAMS = {
    "apache/kafka": {"/opt/kafka/bin/kafka-topics.sh"},  # Kafka is installed in /opt/kafka
    "timescale/timescaledb": {"pg_isready"},  # based on the postgres image (client tools)
    "redis": {"redis-cli"},
    "minio/minio": {"mc"},  # server images bundle the mc client (`mc ready local`)
    "prom/prometheus": {"wget"},  # busybox base
    "grafana/grafana": {"wget"},  # Alpine base (busybox wget); -ubuntu tags have no wget
}
# Health endpoints of third-party servers on their default ports (documented APIs).
IMAGE_ENDPOINTS = {
    "prom/prometheus": "http://127.0.0.1:9090/-/ready",
    "grafana/grafana": "http://127.0.0.1:3000/api/health",
}
OUR_IMAGES = {"flow": DOCKERFILE, "mlflow": MLFLOW_DOCKERFILE}


def healthcheck_argv(svc: dict[str, Any]) -> list[str]:
    """The health check as an argv (CMD-SHELL: the shell words, env assignments dropped)."""
    test = svc["healthcheck"]["test"]
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    kind, *rest = test
    words = shlex.split(rest[0]) if kind == "CMD-SHELL" else rest
    assert kind in ("CMD", "CMD-SHELL"), kind
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]
    return words


def test_health_checks_run_programs_the_images_have() -> None:
    checked = set()
    for name, svc in services().items():
        if "healthcheck" not in svc:
            continue
        program = healthcheck_argv(svc)[0]
        repo = svc["image"].split(":")[0]
        if name in OUR_IMAGES or svc.get("build") or repo.startswith("${"):
            dockerfile = OUR_IMAGES.get(name, DOCKERFILE)
            base = dockerfile_instructions(dockerfile)[0]
            assert base[0] == "FROM" and base[1].startswith("python:"), name
            assert program == "python", f"{name}: {program} is not in a python image"
        else:
            assert program in IMAGE_PROGRAMS.get(repo, set()), f"{name}: {program} in {repo}?"
        checked.add(name)
    assert checked == {"kafka", "timescaledb", "redis", "minio", "mlflow", "prometheus",
                       "grafana", "flow"}  # fmt: skip
    # The other Kafka client in the stack uses the same program from the same image.
    assert "/opt/kafka/bin/kafka-topics.sh" in command_list(services()["kafka-init"])[-1]
    assert services()["kafka-init"]["image"] == services()["kafka"]["image"]


def test_health_checks_address_what_the_services_serve() -> None:
    svcs = services()
    kafka = healthcheck_argv(svcs["kafka"])
    bootstrap = kafka[kafka.index("--bootstrap-server") + 1]
    listener_ports = [
        v.rsplit(":", 1)[1]
        for v in kafka_listeners(env_of(svcs["kafka"])["KAFKA_LISTENERS"]).values()
    ]
    assert bootstrap.split(":")[0] in ("localhost", "127.0.0.1")
    assert bootstrap.rsplit(":", 1)[1] in listener_ports

    pg = healthcheck_argv(svcs["timescaledb"])
    pg_env = env_of(svcs["timescaledb"])
    assert pg[pg.index("-U") + 1] == pg_env["POSTGRES_USER"]
    assert pg[pg.index("-d") + 1] == pg_env["POSTGRES_DB"]
    assert pg[pg.index("-p") + 1] == "5432" and "PGPORT" not in pg_env

    assert healthcheck_argv(svcs["redis"]) == ["redis-cli", "ping"]
    assert "--port" not in command_list(svcs["redis"])  # redis-cli's default port, 6379

    for name in ("prometheus", "grafana"):
        url = healthcheck_argv(svcs[name])[-1]
        assert url == IMAGE_ENDPOINTS[svcs[name]["image"].split(":")[0]], name
    assert not any(a.startswith("--web.listen-address") for a in command_list(svcs["prometheus"]))
    assert "GF_SERVER_HTTP_PORT" not in env_of(svcs["grafana"])

    mlflow_url = healthcheck_argv(svcs["mlflow"])[-1]
    port = re.search(r"127\.0\.0\.1:(\d+)(/\w+)", mlflow_url)
    assert port and f"--port={port[1]}" in command_list(svcs["mlflow"])
    from mlflow.server import app  # the MLflow server this image runs (same pinned version)

    assert app.test_client().get(port[2]).status_code == 200


def test_flow_health_check_command_passes_against_the_flow_server_and_fails_without_it() -> None:
    import socket

    from connectors.health import HealthServer

    svc = services()["flow"]
    argv = healthcheck_argv(svc)
    assert argv[:2] == ["python", "-c"]
    code = argv[2]
    port = env_of(svc)["PM_METRICS_PORT"]
    assert env_of(svc)["PM_METRICS_ADDRESS"] == "0.0.0.0"
    assert f"127.0.0.1:{port}/healthz" in code
    server = HealthServer("127.0.0.1", 0).start()
    try:
        live = code.replace(f":{port}/", f":{server.port}/")
        ok = subprocess.run([sys.executable, "-c", live], capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
    finally:
        server.close()
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = code.replace(f":{port}/", f":{sock.getsockname()[1]}/")
        down = subprocess.run([sys.executable, "-c", dead], capture_output=True, timeout=30)
    assert down.returncode != 0


def test_compose_variables_are_documented_with_consistent_defaults() -> None:
    refs = compose_var_refs()
    used = {name for name, _, _ in refs}
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    assert used - documented == set(), "compose variables missing from .env.example"
    assert documented - used == set(), ".env.example documents variables compose does not use"
    defaults: dict[str, set[str]] = {}
    for name, op, arg in refs:
        defaults.setdefault(name, set()).add(arg if op in (":-", "-") else "<none>")
    inconsistent = {n: d for n, d in defaults.items() if len(d) > 1}
    assert inconsistent == {}, "one variable, several defaults"


def test_env_example_values_match_compose_defaults() -> None:
    default = {name: arg for name, op, arg in compose_var_refs() if op == ":-"}
    for name, value in re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.M):
        if name in default:
            assert value == default[name], f".env.example {name}={value} != default"


def test_flow_environment_is_made_of_known_settings() -> None:
    fields = Settings.model_fields
    env = env_of(services()["flow"])
    for var in env:
        if var in ENTRYPOINT_ONLY_VARS:
            assert var in ENTRYPOINT.read_text(), f"{var} is not read by the entrypoint"
            assert var[3:].lower() not in fields
            continue
        assert var.startswith("PM_"), var
        head, _, nested = var[3:].lower().partition("__")
        assert head in fields, f"{var}: Settings has no field {head}"
        if nested:
            section = fields[head].annotation
            assert isinstance(section, type) and issubclass(section, BaseModel), var
            assert nested in section.model_fields, f"{var}: {head} has no field {nested}"


def test_flow_environment_builds_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("PM_"):
            monkeypatch.delenv(var)
    env = env_of(services()["flow"])
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    s = load_settings()
    assert s.source == "kafka"
    assert s.kafka_brokers == "kafka:9092"
    assert s.metrics_port == 9100
    assert s.model == "models:/predictive_maintenance_model@production"
    assert s.mlflow_tracking_uri == "http://mlflow:5000"
    assert s.database_url is not None
    assert "@timescaledb:5432/pm" in s.database_url.get_secret_value()
    assert s.redis_url is not None
    assert s.redis_url.get_secret_value() == "redis://redis:6379/0"
    assert s.apprise_urls == ()


def test_flow_database_url_uses_the_database_password() -> None:
    env = {"POSTGRES_PASSWORD": "s3cret-pw"}
    svcs = interpolate(compose_raw(), env)["services"]
    assert env_of(svcs["timescaledb"])["POSTGRES_PASSWORD"] == "s3cret-pw"
    assert env_of(svcs["grafana"])["POSTGRES_PASSWORD"] == "s3cret-pw"
    url = env_of(svcs["flow"])["PM_DATABASE_URL"]
    assert url == "postgresql://pm:s3cret-pw@timescaledb:5432/pm"
    assert env_of(svcs["timescaledb"])["POSTGRES_USER"] == "pm"
    assert env_of(svcs["timescaledb"])["POSTGRES_DB"] == "pm"


def test_flow_metrics_port_is_scraped_by_prometheus() -> None:
    port = env_of(services()["flow"])["PM_METRICS_PORT"]
    doc = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
    targets = [t for sc in jobs["flow"]["static_configs"] for t in sc["targets"]]
    assert targets == [f"flow:{port}"]
    assert any(p.endswith(f":{port}") for p in services()["flow"]["ports"])


def test_files_mounted_and_built_from_the_repo_exist() -> None:
    checked = 0
    for name, svc in services().items():
        for source, _ in bind_mounts(svc):
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            checked += 1
        build = svc.get("build")
        if build:
            context = ROOT / build["context"]
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
    assert checked >= 4


def test_one_shot_services_write_to_volumes() -> None:
    svcs = services()
    trainer = svcs["trainer"]
    assert trainer["profiles"] == ["train"]
    out = command_list(trainer)[command_list(trainer).index("--out") + 1]
    targets = [v.split(":")[1] for v in trainer["volumes"]]
    assert any(out.startswith(t + "/") for t in targets), "trainer output is not on a volume"
    assert "flow-recovery:/recovery" in svcs["flow"]["volumes"]
    named = set(compose()["volumes"])
    for name, svc in svcs.items():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in named, f"{name} uses undeclared volume {source}"


def test_simulator_command_is_accepted_by_the_simulator() -> None:
    from connectors.simulator import build_parser, config_from_args

    cmd = command_list(services()["simulator"])
    assert cmd[:3] == ["python", "-m", "connectors.simulator"]
    args = build_parser().parse_args(cmd[3:])
    cfg = config_from_args(args)
    assert cfg.num_equipment == 50
    assert cfg.equipment_types == ("turbofan_engine", "pump")
    assert cfg.replace_on_failure
    assert args.kafka == "kafka:9092"
    assert args.topic == load_settings().kafka.input_topic


def kafka_listeners(spec: str) -> dict[str, str]:
    """``NAME://host:port,...`` -> {NAME: "host:port"}."""
    return dict(item.split("://", 1) for item in spec.split(","))


def test_trainer_command_is_accepted_by_the_trainer() -> None:
    from models.train import build_parser

    trainer = services()["trainer"]
    cmd = command_list(trainer)
    assert cmd[:3] == ["python", "-m", "models.train"]
    args = build_parser().parse_args(cmd[3:])
    assert args.out == "/artifacts/model"
    assert not args.no_mlflow and not args.no_register, "the flow needs a registered model"
    assert env_of(trainer)["PM_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    flow_env = env_of(services()["flow"])
    assert flow_env["PM_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_kafka_listeners_serve_network_and_host() -> None:
    kafka = services()["kafka"]
    env = env_of(kafka)
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = kafka_listeners(env["KAFKA_LISTENERS"])
    advertised = kafka_listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    assert set(listeners) <= set(protocols)
    assert advertised["PLAINTEXT"] == "kafka:9092"
    assert advertised["PLAINTEXT_HOST"] == "localhost:9092"
    host_listener_port = listeners["PLAINTEXT_HOST"].rsplit(":", 1)[1]
    assert kafka["ports"] == [f"127.0.0.1:9092:{host_listener_port}"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"1@kafka:{listeners['CONTROLLER'][1:]}"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env_of(services()["flow"])["PM_KAFKA_BROKERS"] == advertised["PLAINTEXT"]


def test_kafka_init_creates_the_flow_topics() -> None:
    script = command_list(services()["kafka-init"])[-1]
    loop = re.search(r"for spec in (.*?); do", script)
    assert loop, script
    created = dict(spec.split(":") for spec in shlex.split(loop.group(1)))
    k = load_settings().kafka
    assert set(created) == {k.input_topic, k.predictions_topic, k.alerts_topic, k.dlq_topic}
    partitions = env_of(services()["kafka-init"])["RAW_SENSOR_PARTITIONS"]
    assert partitions == "4"
    assert created[k.input_topic] == "$RAW_SENSOR_PARTITIONS"


def test_published_ports_bind_to_loopback_by_default() -> None:
    for name, svc in services().items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"


# --- Dockerfiles and the entrypoint ------------------------------------------------------


def test_dockerfile_copy_sources_exist_and_are_not_ignored() -> None:
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        verdict = False
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for pattern in ignore:
            negate = pattern.startswith("!")
            pat = pattern.lstrip("!").rstrip("/")
            if any(fnmatch(p, pat) or fnmatch(p, pat.removeprefix("**/")) for p in prefixes):
                verdict = not negate
        return verdict

    sources = []
    for instr, args in dockerfile_instructions(DOCKERFILE):
        if instr in ("COPY", "ADD"):
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            assert "--from" not in args
            sources += words[:-1]
    assert "pyproject.toml" in sources
    for src in sources:
        assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
        assert not ignored(src), f".dockerignore excludes {src}"
    assert ignored(".venv/bin/python") and ignored(".env")


def test_dockerfile_runs_the_flow_with_recovery_as_non_root() -> None:
    from bytewax.run import _create_arg_parser

    instructions = dockerfile_instructions(DOCKERFILE)
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [args for instr, args in instructions if instr == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(args for instr, args in instructions if instr == "RUN")
    assert "pip install --no-deps ." in runs
    (entrypoint,) = [json.loads(a) for i, a in instructions if i == "ENTRYPOINT"]
    (cmd,) = [json.loads(a) for i, a in instructions if i == "CMD"]
    assert entrypoint == ["/usr/local/bin/flow-entrypoint.sh"]
    assert any(
        i == "COPY" and a.split()[-1] == entrypoint[0] and "flow-entrypoint.sh" in a
        for i, a in instructions
    )
    assert ("STOPSIGNAL", "SIGINT") in instructions
    assert cmd[:3] == ["python", "-m", "bytewax.run"]
    args = _create_arg_parser().parse_args(cmd[3:])
    assert args.import_str == "flows.main"
    assert str(args.recovery_directory) == "/recovery"
    assert args.snapshot_interval == timedelta(seconds=30)
    assert args.backup_interval == timedelta(seconds=0)


def test_mlflow_image_pins_the_project_mlflow_version() -> None:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("mlflow==")]
    assert f'"{pin}"' in MLFLOW_DOCKERFILE.read_text()


def _stub_python(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH with a `python` that logs its arguments; bytewax.recovery runs for real."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls.log"
    stub = bindir / "python"
    stub.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{calls}"\n'
        'case "$*" in\n'
        f'  "-m bytewax.recovery "*) exec "{sys.executable}" "$@" ;;\n'
        "esac\n"
        "exit 0\n"
    )
    stub.chmod(0o755)
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    return env, calls


def _run_entrypoint(env: dict[str, str], *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(ENTRYPOINT), *cmd],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_entrypoint_initialises_recovery_once_then_execs_the_flow(tmp_path: Path) -> None:
    env, calls = _stub_python(tmp_path)
    env["PM_RECOVERY_PARTITIONS"] = "3"
    rec = tmp_path / "recovery"
    flow = ["python", "-m", "bytewax.run", "flows.main", "-r", str(rec), "-s", "30", "-b", "0"]

    first = _run_entrypoint(env, *flow)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in rec.iterdir()) == [f"part-{i}.sqlite3" for i in range(3)]
    log = calls.read_text().splitlines()
    assert log == [f"-m bytewax.recovery {rec} 3", " ".join(flow[1:])]

    env["PM_RECOVERY_PARTITIONS"] = "5"  # ignored: partitions exist already
    second = _run_entrypoint(env, *flow)
    assert second.returncode == 0, second.stderr
    assert len(list(rec.iterdir())) == 3
    assert calls.read_text().splitlines()[2:] == [" ".join(flow[1:])]


def test_entrypoint_gives_each_process_its_share_of_the_recovery_partitions(
    tmp_path: Path,
) -> None:
    """One recovery volume per process (a StatefulSet): partition j on process j mod P."""
    env, calls = _stub_python(tmp_path)
    env["PM_RECOVERY_PARTITIONS"] = "5"
    addresses = "pm-flow-0.pm-flow:2101;pm-flow-1.pm-flow:2101"
    flow = ["python", "-m", "bytewax.run", "flows.main", "-s", "30", "-b", "0"]
    kept = {}
    for pid, spelling in ((0, ["-i", "0", "-a", addresses]), (1, ["env"])):
        rec = tmp_path / f"rec{pid}"
        run_env = dict(env)
        if spelling == ["env"]:
            run_env |= {"BYTEWAX_PROCESS_ID": str(pid), "BYTEWAX_ADDRESSES": addresses}
            spelling = []
        result = _run_entrypoint(run_env, *flow, *spelling, "-r", str(rec))
        assert result.returncode == 0, result.stderr
        kept[pid] = sorted(p.name for p in rec.iterdir())
    assert kept == {
        0: ["part-0.sqlite3", "part-2.sqlite3", "part-4.sqlite3"],
        1: ["part-1.sqlite3", "part-3.sqlite3"],
    }
    # Together exactly one full set, as Bytewax needs; a restart keeps what is there.
    result = _run_entrypoint(env, *flow, "-i", "1", "-a", addresses, "-r", str(tmp_path / "rec1"))
    assert result.returncode == 0 and "resuming from 2 recovery partitions" in result.stderr
    assert len(list((tmp_path / "rec1").iterdir())) == 2
    assert sum("bytewax.recovery" in line for line in calls.read_text().splitlines()) == 2

    result = _run_entrypoint(env, *flow, "-i", "", "-a", addresses, "-r", str(tmp_path / "r"))
    assert result.returncode == 2 and "process id (-i) is empty" in result.stderr

    env["PM_RECOVERY_PARTITIONS"] = "1"  # fewer partitions than processes: refused
    result = _run_entrypoint(env, *flow, "-i", "0", "-a", addresses, "-r", str(tmp_path / "r"))
    assert result.returncode == 2 and "fewer than the 2 processes" in result.stderr


def test_entrypoint_finds_the_recovery_dir_in_all_spellings(tmp_path: Path) -> None:
    env, _ = _stub_python(tmp_path)
    env["PM_RECOVERY_PARTITIONS"] = "1"
    base = ["python", "-m", "bytewax.run", "flows.main", "-s", "30", "-b", "0"]
    for i, spelling in enumerate(("--recovery-directory={}", "--recovery-directory {}", "env")):
        rec = tmp_path / f"rec{i}"
        run_env = dict(env)
        if spelling == "env":
            run_env["BYTEWAX_RECOVERY_DIRECTORY"] = str(rec)
            extra: list[str] = []
        else:
            extra = spelling.format(rec).split(" ")
        assert _run_entrypoint(run_env, *base, *extra).returncode == 0
        assert [p.name for p in rec.iterdir()] == ["part-0.sqlite3"], spelling


def test_entrypoint_migrates_only_when_asked(tmp_path: Path) -> None:
    env, calls = _stub_python(tmp_path)
    flow = ["python", "-m", "bytewax.run", "flows.main"]  # no recovery: nothing to init
    url = "postgresql://pm:pw@db:5432/pm"
    cases = [({}, False), ({"PM_DATABASE_URL": url}, True)]
    cases += [
        ({"PM_DATABASE_URL": url, "PM_POSTGRES__MIGRATE_ON_START": v}, False)
        for v in ("false", "False", "0", "no", "off")
    ]
    cases += [({"PM_DATABASE_URL": url, "PM_POSTGRES__MIGRATE_ON_START": "true"}, True)]
    for extra, migrates in cases:
        calls.write_text("")
        result = _run_entrypoint({**env, **extra}, *flow)
        assert result.returncode == 0, result.stderr
        log = calls.read_text().splitlines()
        expected = [" ".join(flow[1:])]
        if migrates:
            expected.insert(
                0, f"-m connectors.migrate --database-url {url} --sql-dir /app/infra/sql"
            )
        assert log == expected, extra
        assert "pw" not in result.stderr, "the entrypoint logs the database password"


def test_entrypoint_runs_other_commands_unchanged(tmp_path: Path) -> None:
    env, calls = _stub_python(tmp_path)
    env["PM_DATABASE_URL"] = "postgresql://x@y/z"
    env["BYTEWAX_RECOVERY_DIRECTORY"] = str(tmp_path / "rec")
    cmd = ["python", "-m", "connectors.simulator", "--num-equipment", "2", "-r", "x"]
    assert _run_entrypoint(env, *cmd).returncode == 0
    assert calls.read_text().splitlines() == [" ".join(cmd[1:])]
    assert not (tmp_path / "rec").exists()


def _image_user() -> tuple[str, int, str, dict[str, str]]:
    """(user, uid, final working directory, ENV) of the project image, from the Dockerfile."""
    instructions = dockerfile_instructions(DOCKERFILE)
    user = [a for i, a in instructions if i == "USER"][-1]
    useradd = next(a for i, a in instructions if i == "RUN" and "useradd" in a)
    uid = int(re.search(r"--uid (\d+)", useradd)[1])  # type: ignore[index]
    assert "--create-home" in useradd and re.search(rf"\b{user}\b", useradd)
    workdir = [a for i, a in instructions if i == "WORKDIR"][-1]
    env: dict[str, str] = {}
    for args in (a for i, a in instructions if i == "ENV"):
        env |= dict(w.split("=", 1) for w in shlex.split(args))
    return user, uid, workdir, env


def _run_flow_as_image_user(
    cwd: Path, home: Path, metrics_port: int, api_port: int
) -> subprocess.CompletedProcess[str]:
    """The image's command through the entrypoint, as the image's uid (when we are root),
    with the flow's health server on and Bytewax's API server (which writes dataflow.json
    into the working directory), a short simulated run, no model, no outputs."""
    _, uid, _, image_env = _image_user()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(home),
        # /app in the image is this checkout
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PM_SQL_DIR": str(ROOT / "infra" / "sql"),
        "PM_RECOVERY_PARTITIONS": image_env["PM_RECOVERY_PARTITIONS"],
        "PM_SOURCE": "simulator",
        "PM_SIMULATOR__NUM_EQUIPMENT": "2",
        "PM_SIMULATOR__READINGS": "3000",
        "PM_OUTPUT": "none",
        "PM_MODEL": "none",
        "PM_METRICS_PORT": str(metrics_port),
        "PM_METRICS_ADDRESS": "127.0.0.1",
        "BYTEWAX_DATAFLOW_API_ENABLED": "1",
        "BYTEWAX_DATAFLOW_API_PORT": str(api_port),
    }
    (cmd,) = [json.loads(a) for i, a in dockerfile_instructions(DOCKERFILE) if i == "CMD"]
    cmd = [str(home / "recovery") if c == "/recovery" else c for c in cmd]
    argv = ["/bin/sh", str(ENTRYPOINT), *cmd]
    if os.geteuid() == 0:
        # Drop to the image's uid. Only reading and searching stay allowed everywhere
        # (CAP_DAC_READ_SEARCH): this checkout's interpreter may live under a directory
        # that uid cannot read (e.g. /root/.pyenv; in the image it is /usr/local); writes
        # follow the uid's permissions.
        caps = ["--inh-caps", "+dac_read_search", "--ambient-caps", "+dac_read_search"]
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *caps, *argv]
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    healthz = []
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            url = f"http://127.0.0.1:{metrics_port}/healthz"
            healthz.append(urllib.request.urlopen(url, timeout=2).status)
        except OSError:
            pass
        time.sleep(0.05)
    try:
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err + f"\nhealthz: {healthz}")


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _user_dir(uid: int, mode: int = 0o755) -> Path:
    """A new directory under /tmp owned by ``uid`` (pytest's tmp_path is private to us)."""
    path = Path(tempfile.mkdtemp(prefix="pm-image-user-"))
    if os.geteuid() == 0:
        os.chown(path, uid, uid)
    path.chmod(mode)
    return path


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="needs setpriv")
def test_image_command_runs_as_the_image_user_in_its_home() -> None:
    user, uid, workdir, image_env = _image_user()
    assert user not in ("root", "0") and workdir == f"/home/{user}"  # useradd --create-home
    assert image_env["PYTHONPATH"] == "/app", "the code is imported from /app, any cwd"
    home = _user_dir(uid)  # the image's WORKDIR: the user's own home
    try:
        metrics_port, api_port = _free_ports(2)
        result = _run_flow_as_image_user(home, home, metrics_port, api_port)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "200" in result.stderr.rsplit("healthz: ", 1)[1], "/healthz never answered"
        written = {p.name: p.stat().st_uid for p in home.iterdir()}
        assert written.get("dataflow.json") == (uid if os.geteuid() == 0 else os.geteuid())
        parts = sorted(p.name for p in (home / "recovery").iterdir())
        assert parts == [
            f"part-{i}.sqlite3" for i in range(int(image_env["PM_RECOVERY_PARTITIONS"]))
        ]
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="needs setpriv")
def test_image_command_fails_in_a_working_directory_the_user_cannot_write() -> None:
    """Why the image's WORKDIR is the user's home: /app belongs to root."""
    _, uid, _, _ = _image_user()
    home = _user_dir(uid)
    readonly = _user_dir(0, 0o755) if os.geteuid() == 0 else _user_dir(os.geteuid(), 0o555)
    try:
        metrics_port, api_port = _free_ports(2)
        result = _run_flow_as_image_user(readonly, home, metrics_port, api_port)
        assert result.returncode != 0
        assert "Permission denied" in result.stderr
    finally:
        readonly.chmod(0o755)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(readonly, ignore_errors=True)


def test_entrypoint_rejects_a_bad_partition_count(tmp_path: Path) -> None:
    env, calls = _stub_python(tmp_path)
    env["PM_RECOVERY_PARTITIONS"] = "four"
    result = _run_entrypoint(env, "python", "-m", "bytewax.run", "flows.main", "-r", "r")
    assert result.returncode == 2
    assert "PM_RECOVERY_PARTITIONS" in result.stderr
    assert not calls.exists()


# --- Prometheus --------------------------------------------------------------------------


def test_prometheus_rule_files_exist_and_rules_use_known_metrics() -> None:
    doc = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert {j["job_name"] for j in doc["scrape_configs"]} == {"prometheus", "flow"}
    rule_files = [PROMETHEUS_DIR / f for f in doc["rule_files"]]
    exported = exported_series()
    assert rule_files and all(f.is_file() for f in rule_files)
    alerts = set()
    for path in rule_files:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                alerts.add(rule["alert"])
                names = metric_names(rule["expr"])
                assert names, rule["alert"]
                unknown = names - set(exported)
                assert unknown == set(), f"{rule['alert']}: unknown metrics {unknown}"
                for metric, labels in selector_labels(rule["expr"]):
                    assert labels <= exported[metric], f"{rule['alert']}: {metric} {labels}"
                assert rule["labels"]["severity"] in ("warning", "critical")
                assert rule["annotations"]["summary"]
    assert {
        "PMFlowDown",
        "PMDeadLetterRateHigh",
        "PMSinkErrors",
        "PMKafkaConsumerLagHigh",
    } <= alerts


def test_prometheus_config_is_mounted_where_prometheus_reads_it() -> None:
    prom = services()["prometheus"]
    mounts = dict(bind_mounts(prom))
    config_dir = mounts["./infra/prometheus"]
    assert f"--config.file={config_dir}/prometheus.yml" in command_list(prom)


# --- Grafana -----------------------------------------------------------------------------


def test_grafana_provisioning_is_mounted_and_points_at_the_dashboards() -> None:
    grafana = services()["grafana"]
    mounts = dict(bind_mounts(grafana))
    dash_dir = mounts["./infra/grafana/dashboards"]
    assert mounts["./infra/grafana/provisioning/datasources"].endswith("datasources")
    prov = mounts["./infra/grafana/provisioning/dashboards"]
    doc = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/dashboards.yml").read_text())
    assert [p["options"]["path"] for p in doc["providers"]] == [dash_dir]
    assert prov == "/etc/grafana/provisioning/dashboards"
    home = env_of(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dash_dir + "/")
    assert (GRAFANA_DIR / "dashboards" / home.rsplit("/", 1)[1]).is_file()


def test_grafana_datasources_reach_the_compose_services() -> None:
    doc = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/datasources.yml").read_text())
    by_type = {ds["type"]: ds for ds in doc["datasources"]}
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    pg = by_type["grafana-postgresql-datasource"]
    tsdb_env = env_of(services()["timescaledb"])
    assert pg["url"] == "timescaledb:5432"
    assert pg["user"] == tsdb_env["POSTGRES_USER"]
    assert pg["jsonData"]["database"] == tsdb_env["POSTGRES_DB"]
    var = re.fullmatch(r"\$\{?(\w+)\}?", pg["secureJsonData"]["password"])
    assert var and var.group(1) in env_of(services()["grafana"])
