"""Remaining-useful-life inference with an ONNX model, and the health score.

A :class:`RulModel` wraps one onnxruntime session plus the metadata written at training
time (feature names in order, window configuration, RUL unit and cap). Sessions are not
picklable: hold them per worker (see ``connectors.model_store``), never in flow state.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from models.conditions import ConditionNormalizer
from models.features import FeatureConfig

META_PREFIX = "pm."


class ModelMismatchError(ValueError):
    """The model's features disagree with the flow's feature configuration."""


@dataclass(frozen=True)
class ModelMetadata:
    """What a trained model promises about its inputs and outputs.

    Fields with defaults were added later: a model exported without them loads with the
    defaults (no condition normalisation, no operating history, an uncalibrated band).
    ``band_offsets`` (lower, upper) widen the quantile band as calibrated in cross-validation
    (conformalised quantile regression) to reach ``band_level`` coverage.
    """

    model_name: str
    equipment_type: str
    feature_names: tuple[str, ...]
    sensors: tuple[str, ...]
    windows: tuple[int, ...]
    fft_sensors: tuple[str, ...]
    fft_bands: int
    rul_unit: str
    rul_cap: float
    hours_per_reading: float
    feature_means: tuple[float, ...]
    training_digest: str = ""
    conditions: ConditionNormalizer | None = None
    operating_history: bool = False
    band_offsets: tuple[float, float] = (0.0, 0.0)
    band_level: float = 0.0
    drift_reference: str = ""  # JSON of models.drift.DriftReference over the training rows

    @property
    def feature_config(self) -> FeatureConfig:
        return FeatureConfig(
            self.sensors,
            self.windows,
            self.fft_sensors,
            self.fft_bands,
            self.conditions,
            self.operating_history,
        )

    def to_props(self) -> dict[str, str]:
        """Metadata as ONNX ``metadata_props`` (string values, JSON where structured)."""
        out = {}
        for k in self.__dataclass_fields__:
            v = getattr(self, k)
            if isinstance(v, ConditionNormalizer):
                v = v.to_json_dict()
            out[META_PREFIX + k] = v if isinstance(v, str) else json.dumps(v)
        return out

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelMetadata:
        raw = {k[len(META_PREFIX) :]: v for k, v in props.items() if k.startswith(META_PREFIX)}
        fields = cls.__dataclass_fields__
        required = [n for n, f in fields.items() if f.default is MISSING]
        missing = [n for n in required if n not in raw]
        if missing:
            raise ValueError(f"model metadata lacks {missing}; was it exported by models.train?")
        out: dict = {}
        for name, field in fields.items():
            if name not in raw:
                continue
            value = raw[name]
            parsed: Any = value if field.type == "str" else json.loads(value)
            if name == "conditions":
                parsed = None if parsed is None else ConditionNormalizer.from_json_dict(parsed)
            elif isinstance(parsed, list):
                parsed = tuple(parsed)
            out[name] = parsed
        return cls(**out)


def check_features(
    meta: ModelMetadata,
    windows: tuple[int, ...],
    fft_enabled: bool,
    bands: int,
    operating_history: bool | None = None,
) -> FeatureConfig:
    """Raise :class:`ModelMismatchError` unless the flow's feature settings rebuild exactly
    the model's feature list. ``operating_history`` None takes the model's choice (for flows
    configured before the option existed); the condition normaliser is learned data and
    always comes from the model."""
    history = meta.operating_history if operating_history is None else operating_history
    expected = FeatureConfig(
        meta.sensors,
        tuple(windows),
        meta.fft_sensors if fft_enabled else (),
        bands,
        meta.conditions,
        history,
    ).names
    if expected != meta.feature_names:
        only_model = sorted(set(meta.feature_names) - set(expected))[:5]
        only_flow = sorted(set(expected) - set(meta.feature_names))[:5]
        raise ModelMismatchError(
            f"model for {meta.equipment_type!r} expects {len(meta.feature_names)} features "
            f"(windows={list(meta.windows)}, fft_sensors={list(meta.fft_sensors)}, "
            f"fft_bands={meta.fft_bands}, operating_history={meta.operating_history}) but "
            f"the flow is configured for {len(expected)} (windows={list(windows)}, "
            f"fft_enabled={fft_enabled}, fft_bands={bands}, operating_history={history}); "
            f"only in model: {only_model}, only in flow: {only_flow}. "
            "Retrain the model or change PM_FEATURES__* to match."
        )
    return meta.feature_config


class RulModel:
    """One equipment type's RUL model: features ``(N, F)`` in, RUL and its band out."""

    def __init__(self, onnx_bytes: bytes, version: str) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"]
        )
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        self.meta = ModelMetadata.from_props(props)
        self.version = version
        self._input = self.session.get_inputs()[0].name
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._means = np.asarray(self.meta.feature_means, dtype=np.float32)
        self._band_lo, self._band_hi = (float(v) for v in self.meta.band_offsets)

    @classmethod
    def from_file(cls, path: str | Path, version: str) -> RulModel:
        return cls(Path(path).read_bytes(), version)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RUL, lower and upper bound (in the model's unit) for each row; NaN features are
        replaced by their training means. The quantile outputs are widened by the calibrated
        ``band_offsets``; without quantile outputs the band is the point."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if np.isnan(x).any():
            x = np.where(np.isnan(x), self._means, x)
        outs = dict(zip(self._outputs, self.session.run(None, {self._input: x}), strict=True))
        cap = self.meta.rul_cap
        rul = np.clip(outs["rul"].reshape(-1), 0.0, cap)
        if "rul_lower" not in outs:
            return rul, rul, rul
        lower, upper = calibrated_band(
            rul,
            outs["rul_lower"].reshape(-1),
            outs["rul_upper"].reshape(-1),
            (self._band_lo, self._band_hi),
            cap,
        )
        return rul, lower, upper


def calibrated_band(
    rul: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    offsets: tuple[float, float],
    cap: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The quantile band widened by the calibrated ``offsets`` (lower, upper), clipped to
    ``[0, cap]`` and made to contain the point prediction ``rul``.

    >>> a = lambda v: np.array([v])
    >>> lo, hi = calibrated_band(a(50.0), a(40.0), a(58.0), (5.0, 3.0), 60)
    >>> lo.tolist(), hi.tolist()
    ([35.0], [60.0])
    """
    lo = np.clip(lower - offsets[0], 0.0, cap)
    hi = np.clip(upper + offsets[1], 0.0, cap)
    return np.minimum(lo, rul), np.maximum(hi, rul)


def health_score(rul_fraction: float, anomaly_level: float, anomaly_weight: float = 0.3) -> float:
    """Health in [0, 1]: 1 = like new, 0 = failing now.

    With ``f`` the predicted RUL as a fraction of the model's cap, the RUL part is
    ``1 - (1 - f)**2``: near 1 while failure is far, falling faster as it nears (0.7 at
    f = 0.45, 0.4 at f = 0.23: about 57 and 28 cycles for a 125-cycle cap). It is lowered by
    up to ``anomaly_weight`` as the equipment's smoothed anomaly level (an EWMA of its
    calibrated scores, near 0.5 in normal operation) rises from 0.5 towards 1.

    >>> health_score(1.0, 0.5)
    1.0
    >>> round(health_score(0.5, 0.5), 3), round(health_score(0.5, 1.0, anomaly_weight=0.3), 3)
    (0.75, 0.525)
    """
    r = min(max(rul_fraction, 0.0), 1.0)
    excess = min(max((anomaly_level - 0.5) / 0.5, 0.0), 1.0)
    return (1.0 - (1.0 - r) ** 2) * (1.0 - anomaly_weight * excess)
