"""Where models live: ONNX files on disk, bundles of them, and the MLflow registry.

A *bundle* is one ONNX file per equipment type (``<dir>/<equipment_type>.onnx``), loaded and
versioned together. ``PM_MODEL`` is a ``.onnx`` file, a bundle directory, or a registry URI
``models:/<name>@<alias>`` (or ``models:/<name>/<version>``). MLflow is imported only when a
registry URI is used, so the flow starts fast without it.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from models.logsafe import redact, secret_parts
from models.rul import RulModel

log = logging.getLogger(__name__)

REGISTERED_MODEL_NAME = "predictive_maintenance_model"
PRODUCTION_ALIAS = "production"


class ModelLoadError(RuntimeError):
    """The configured model could not be loaded."""


@dataclass(frozen=True)
class ModelBundle:
    """The RUL models in use, one per equipment type, and the version they share."""

    source: str
    version: str
    models: dict[str, RulModel] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict, repr=False)  # the ONNX files

    def for_type(self, equipment_type: str) -> RulModel | None:
        return self.models.get(equipment_type)


def is_registry_uri(source: str) -> bool:
    return source.startswith("models:/")


def _onnx_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.rglob("*.onnx"))
        if files:
            return files
        raise ModelLoadError(f"no .onnx files in model directory {path}")
    raise ModelLoadError(f"model path does not exist: {path} (run `make train`)")


def load_path(path: str | Path, version: str | None = None, source: str | None = None):
    """Load a ``.onnx`` file or a bundle directory. Without ``version``, the version is a
    digest of the files' bytes, so the same files always report the same version."""
    files = _onnx_files(Path(path))
    blobs = {f: f.read_bytes() for f in files}
    if version is None:
        digest = hashlib.sha256(b"".join(blobs[f] for f in files)).hexdigest()[:12]
        version = f"sha256:{digest}"
    models: dict[str, RulModel] = {}
    by_type: dict[str, bytes] = {}
    for f, blob in blobs.items():
        try:
            model = RulModel(blob, version)
        except Exception as exc:  # onnxruntime raises several types
            raise ModelLoadError(f"cannot load ONNX model {f}: {exc}") from exc
        etype = model.meta.equipment_type
        if etype in models:
            raise ModelLoadError(f"two models for equipment type {etype!r} in {path}")
        models[etype] = model
        by_type[etype] = blob
    return ModelBundle(source or str(path), version, models, by_type)


def registry_version(uri: str, tracking_uri: str) -> str:
    """The model version a registry URI points to now (cheap: one registry query)."""
    import mlflow

    name, sep, ref = uri[len("models:/") :].partition("@")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if sep:
            return str(client.get_model_version_by_alias(name, ref).version)
        name, _, version = name.partition("/")
        return str(client.get_model_version(name, version).version)
    except Exception as exc:
        # the tracking URI may carry credentials (https://user:token@host): never echo them
        raise ModelLoadError(
            redact(
                f"cannot resolve {uri} in MLflow at {tracking_uri}: {exc}",
                secret_parts(tracking_uri),
            )
        ) from None


def load_registry(uri: str, tracking_uri: str) -> ModelBundle:
    """Download the model version a registry URI points to and load its ONNX files."""
    import mlflow

    version = registry_version(uri, tracking_uri)
    name = uri[len("models:/") :].partition("@")[0].partition("/")[0]
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="pm-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=tmp
            )
        except Exception as exc:
            raise ModelLoadError(
                redact(
                    f"cannot download {uri} (version {version}): {exc}", secret_parts(tracking_uri)
                )
            ) from None
        return load_path(local, version=version, source=uri)


def load_model(source: str, tracking_uri: str) -> ModelBundle:
    """Load ``PM_MODEL``: a registry URI, a bundle directory or one ``.onnx`` file."""
    if is_registry_uri(source):
        return load_registry(source, tracking_uri)
    return load_path(source)


def save_bundle(onnx_by_type: dict[str, bytes], out: str | Path) -> list[Path]:
    """Write one ONNX file per equipment type; ``out`` is a directory, or a ``.onnx`` path
    when there is exactly one type."""
    out = Path(out)
    if out.suffix == ".onnx":
        if len(onnx_by_type) != 1:
            raise ValueError(f"{out} is a single file but {len(onnx_by_type)} models were trained")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(next(iter(onnx_by_type.values())))
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.onnx"):
        if stale.stem not in onnx_by_type:
            stale.unlink()
    paths = []
    for etype, blob in onnx_by_type.items():
        path = out / f"{etype}.onnx"
        path.write_bytes(blob)
        paths.append(path)
    return paths
