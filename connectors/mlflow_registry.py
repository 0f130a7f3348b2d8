"""Track training runs in MLflow and register model bundles.

A bundle is logged as an MLflow pyfunc model whose artifacts are the ONNX files, registered
as ``predictive_maintenance_model``; the ``production`` alias marks the version the flow
serves. Importing this module imports MLflow (slow): only training code does.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

from connectors.model_store import PRODUCTION_ALIAS, REGISTERED_MODEL_NAME, load_path
from models.logsafe import redact, secret_parts

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class OnnxBundleModel(PythonModel):
    """pyfunc wrapper so MLflow users can score a bundle: input = feature rows of one
    equipment type (``params={"equipment_type": ...}``), output = RUL per row."""

    def load_context(self, context):
        first = Path(next(iter(context.artifacts.values())))
        self.bundle = load_path(first.parent)

    def predict(self, context, model_input, params=None):
        etype = (params or {}).get("equipment_type") or next(iter(self.bundle.models))
        rul, _, _ = self.bundle.models[etype].predict(np.asarray(model_input, dtype=np.float32))
        return rul


def setup(tracking_uri: str, experiment: str = "predictive_maintenance") -> None:
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    try:
        mlflow.set_experiment(experiment)
    except Exception as exc:
        raise _masked(exc) from None


class RegistryError(RuntimeError):
    """An MLflow call failed (the message has the tracking URI's password masked)."""


def _masked(exc: Exception) -> RegistryError:
    uri = mlflow.get_tracking_uri()
    return RegistryError(redact(f"MLflow at {uri}: {type(exc).__name__}: {exc}", secret_parts(uri)))


def log_bundle(
    files: list[Path],
    *,
    register: bool = True,
    alias: str | None = PRODUCTION_ALIAS,
    name: str = REGISTERED_MODEL_NAME,
) -> str | None:
    """Log the ONNX files of the active run as a pyfunc model; register it and point
    ``alias`` at the new version. Returns the registered version (or None)."""
    try:
        return _log_bundle(files, register, alias, name)
    except Exception as exc:  # MLflow errors may quote the tracking URI, credentials included
        raise _masked(exc) from None


def _log_bundle(files: list[Path], register: bool, alias: str | None, name: str) -> str | None:
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=OnnxBundleModel(),
        artifacts={f.stem: str(f) for f in files},
        pip_requirements=["onnxruntime==1.32.0", "numpy==2.4.6"],
    )
    if not register:
        return None
    mv = mlflow.register_model(info.model_uri, name)
    client = mlflow.MlflowClient()
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def set_alias(version: str, alias: str = PRODUCTION_ALIAS, name: str = REGISTERED_MODEL_NAME):
    try:
        mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    except Exception as exc:
        raise _masked(exc) from None
