"""Secrets never appear in what the flow prints when it cannot start: mistyped or malformed
(nested) variables, malformed or rejected database URLs, an MLflow URI with credentials,
a bad Apprise URL. Each case runs the real entry point, ``python -m bytewax.run flows.main``,
and checks the exit code, that the message names the problem, and that the secret is absent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.settings import describe_error, load_settings
from tests.private_services import free_port

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-Zq7"


def run_flow(env: dict[str, str]) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PM_")}
    base.update(PM_MODEL="none", PM_OUTPUT="none", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                MLFLOW_HTTP_REQUEST_TIMEOUT="5")  # fmt: skip
    base.update(env)
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "flows.main"], cwd=ROOT,
                          env=base, capture_output=True, text=True, timeout=300)  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


CASES = {
    "nested JSON of the wrong type": (
        {"PM_KAFKA__CLIENT_CONFIG": f'["sasl.password={SECRET}"]'}, "kafka.client_config"),
    "nested JSON that does not parse": (
        {"PM_KAFKA__CLIENT_CONFIG": f'{{"sasl.password": "{SECRET}", oops'}, "kafka"),
    "mistyped nested variable": ({"PM_KAFKA__CLIENT_CONFIGS": SECRET}, "client_configs"),
    "mistyped section": ({"PM_KAFKA": f'{{"sasl_password": "{SECRET}"}}'}, "sasl_password"),
    "malformed keyword DSN": (
        {"PM_DATABASE_URL": f"host=127.0.0.1 password={SECRET} dbname"}, "database_url"),
    "invalid URL option": (
        {"PM_DATABASE_URL": f"postgresql://pm:{SECRET}@127.0.0.1:{free_port()}/pm?sslmode=x"},
        "sslmode"),
    "unreachable database": (
        {"PM_DATABASE_URL": f"postgresql://pm:{SECRET}@127.0.0.1:{free_port()}/pm"},
        "connection"),
    "MLflow URI with credentials": (
        {"PM_MODEL": "models:/predictive_maintenance_model@production",
         "PM_MLFLOW_TRACKING_URI": f"http://bob:{SECRET}@127.0.0.1:{free_port()}"},
        "bob:***@"),
    "bad Apprise URL": (
        {"PM_APPRISE_URLS": f"nosuchscheme://bob:{SECRET}@example"}, "cannot start"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_start_up_errors_name_the_problem_without_the_secret(case):
    env, expected = CASES[case]
    code, out = run_flow(env)
    assert code != 0, out
    assert SECRET not in out, out
    assert expected in out, out
    assert "cannot start" in out, out


@pytest.mark.integration
def test_rejected_password_is_not_echoed():
    url = os.environ.get("PM_TEST_DATABASE_URL")
    if not url:
        pytest.skip("PM_TEST_DATABASE_URL is not set")
    wrong = url.replace("pm:pm@", f"pm:{SECRET}@")
    code, out = run_flow({"PM_DATABASE_URL": wrong})
    assert code == 2, out
    assert "password authentication failed" in out
    assert SECRET not in out


def test_describe_error_leaves_values_out(monkeypatch):
    monkeypatch.setenv("PM_METRICS_PORT", SECRET)
    monkeypatch.setenv("PM_DATABASE_URL", f"postgresql://pm:{SECRET}@db/pm")
    monkeypatch.setenv("PM_KAFKA__CLIENT_CONFIG", f'["{SECRET}"]')
    with pytest.raises(Exception) as info:
        load_settings()
    text = describe_error(info.value)
    assert SECRET in str(info.value), "pydantic itself does print the values"
    assert SECRET not in text
    assert "metrics_port" in text and "kafka.client_config" in text


def test_mlflow_registry_errors_mask_the_tracking_uri_password(monkeypatch):
    from connectors import mlflow_registry

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://bob:{SECRET}@127.0.0.1:{free_port()}"
    with pytest.raises(mlflow_registry.RegistryError) as info:
        mlflow_registry.setup(uri)
    assert SECRET not in str(info.value) and "bob:***@127.0.0.1" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    "url",
    [
        f"host=127.0.0.1 password={SECRET} dbname",
        f"postgresql://pm:{SECRET}@127.0.0.1:{free_port()}/pm",
    ],
)
def test_migrate_cli_masks_the_database_password(url):
    proc = subprocess.run([sys.executable, "-m", "connectors.migrate", "--database-url", url],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("migrate: ") and SECRET not in proc.stdout + proc.stderr
