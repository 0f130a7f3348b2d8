"""Health score, status, model metadata, the feature check, and a real (tiny) ONNX RulModel."""

from __future__ import annotations

import dataclasses
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import HistGradientBoostingRegressor

from alerting.rules import Thresholds
from models.equipment_state import Scored
from models.features import FeatureConfig
from models.onnx_export import as_float32_grid, export_onnx, parity, snap_thresholds
from models.predict import predict_batch, status_for
from models.rul import ModelMetadata, ModelMismatchError, RulModel, check_features, health_score
from models.schemas import Reading

PROPS = settings(max_examples=200, deadline=None)
UNIT = st.floats(-0.5, 1.5, allow_nan=False)
LEVEL = st.floats(-1.0, 2.0, allow_nan=False)
WEIGHT = st.floats(0.0, 1.0, allow_nan=False)
SEVERITY = {"ok": 0, "warning": 1, "critical": 2}

# skl2onnx 1.20 hands onnx a bool where it wants an int; onnx says 7.34 will reject it
pytestmark = pytest.mark.filterwarnings(
    "ignore:Field onnx.AttributeProto.ints. Expected an int, got a boolean:DeprecationWarning"
)


# --- health -------------------------------------------------------------------------------


@PROPS
@given(f=UNIT, level=LEVEL, w=WEIGHT)
def test_health_is_bounded(f: float, level: float, w: float) -> None:
    assert 0.0 <= health_score(f, level, w) <= 1.0


@PROPS
@given(f1=UNIT, f2=UNIT, level=LEVEL, w=WEIGHT)
def test_health_rises_with_remaining_life(f1: float, f2: float, level: float, w: float) -> None:
    lo, hi = sorted((f1, f2))
    assert health_score(lo, level, w) <= health_score(hi, level, w)


@PROPS
@given(f=UNIT, l1=LEVEL, l2=LEVEL, w=WEIGHT)
def test_health_falls_with_anomaly_level(f: float, l1: float, l2: float, w: float) -> None:
    lo, hi = sorted((l1, l2))
    assert health_score(f, hi, w) <= health_score(f, lo, w)


@PROPS
@given(level=LEVEL, w=WEIGHT)
def test_health_end_points(level: float, w: float) -> None:
    assert health_score(0.0, level, w) == 0.0  # failing now, whatever the anomaly level
    assert health_score(1.0, min(level, 0.5), w) == 1.0  # like new, normal behaviour
    assert health_score(1.0, 1.0, w) == pytest.approx(1.0 - w)  # the most anomalies cost


def test_health_strictly_decreases_as_failure_nears() -> None:
    h = [health_score(f, 0.5) for f in np.linspace(1.0, 0.0, 21)]
    assert all(a > b for a, b in pairwise(h))


# --- status -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rul_hours", "health", "status"),
    [
        (None, 1.0, "ok"),
        (None, 0.7, "ok"),  # at the warning threshold is not below it
        (None, 0.69, "warning"),
        (None, 0.4, "warning"),
        (None, 0.39, "critical"),
        (1e6, 0.95, "ok"),
        (72.0, 0.95, "ok"),
        (71.9, 0.95, "warning"),
        (24.0, 0.95, "warning"),
        (23.9, 0.95, "critical"),
        (0.0, 1.0, "critical"),
        (100.0, 0.5, "warning"),
        (50.0, 0.3, "critical"),
        (10.0, 0.9, "critical"),
    ],
)
def test_status_at_the_default_thresholds(rul_hours: float | None, health: float, status: str):
    th = Thresholds()
    assert (th.rul_warning_hours, th.rul_critical_hours) == (72.0, 24.0)
    assert (th.health_warning, th.health_critical) == (0.7, 0.4)
    assert status_for(rul_hours, health, th) == status


@st.composite
def thresholds(draw) -> Thresholds:
    rc, rw = sorted(draw(st.lists(st.floats(1.0, 500.0), min_size=2, max_size=2, unique=True)))
    hc, hw = sorted(draw(st.lists(st.floats(0.05, 0.95), min_size=2, max_size=2, unique=True)))
    return Thresholds(
        rul_warning_hours=rw, rul_critical_hours=rc, health_warning=hw, health_critical=hc
    )


RUL = st.none() | st.floats(0.0, 1000.0)


@PROPS
@given(th=thresholds(), rul=RUL, health=st.floats(0.0, 1.0))
def test_status_agrees_with_thresholds(th: Thresholds, rul: float | None, health: float) -> None:
    status = status_for(rul, health, th)
    rul_level = (
        0 if rul is None else 2 if rul < th.rul_critical_hours else int(rul < th.rul_warning_hours)
    )
    health_level = 2 if health < th.health_critical else int(health < th.health_warning)
    assert SEVERITY[status] == max(rul_level, health_level)
    # an unknown RUL is judged on health alone, like an RUL that is far away
    assert status_for(None, health, th) == status_for(float("inf"), health, th)


@PROPS
@given(th=thresholds(), r1=RUL, r2=RUL, h1=st.floats(0.0, 1.0), h2=st.floats(0.0, 1.0))
def test_status_never_improves_as_things_get_worse(
    th: Thresholds, r1: float | None, r2: float | None, h1: float, h2: float
) -> None:
    worse_rul = r2 if r1 is None or (r2 is not None and r2 < r1) else r1
    worse = status_for(worse_rul, min(h1, h2), th)
    assert SEVERITY[worse] >= SEVERITY[status_for(r1, h1, th)]


# --- metadata -----------------------------------------------------------------------------


def metadata(cfg: FeatureConfig, **changes) -> ModelMetadata:
    meta = ModelMetadata(
        model_name="predictive_maintenance_model",
        equipment_type="turbofan_engine",
        feature_names=cfg.names,
        sensors=cfg.sensors,
        windows=cfg.windows,
        fft_sensors=cfg.fft_sensors,
        fft_bands=cfg.fft_bands,
        rul_unit="cycles",
        rul_cap=125.0,
        hours_per_reading=0.5,
        feature_means=tuple(0.1 * i - 1.0 / 3.0 for i in range(len(cfg.names))),
        training_digest="0123abcd",
    )
    return dataclasses.replace(meta, **changes)


CFG = FeatureConfig(("T24", "T30", "vib"), (3, 6), ("vib",), 2)


@pytest.mark.parametrize(
    "meta",
    [
        metadata(CFG),
        metadata(CFG, training_digest=""),
        metadata(FeatureConfig(("x",), (2,)), rul_unit="hours", rul_cap=720.5, model_name="m é"),
    ],
)
def test_metadata_props_round_trip(meta: ModelMetadata) -> None:
    props = meta.to_props()
    assert all(isinstance(k, str) and k.startswith("pm.") for k in props)
    assert all(isinstance(v, str) for v in props.values())  # ONNX metadata_props are strings
    back = ModelMetadata.from_props({**props, "unrelated": "x"})
    assert back == meta
    assert back.feature_config == FeatureConfig(
        meta.sensors, meta.windows, meta.fft_sensors, meta.fft_bands
    )
    assert back.feature_config.names == meta.feature_names


def test_metadata_without_digest_still_loads() -> None:
    props = metadata(CFG).to_props()
    del props["pm.training_digest"]
    assert ModelMetadata.from_props(props).training_digest == ""


def test_metadata_missing_fields_are_named() -> None:
    props = metadata(CFG).to_props()
    del props["pm.rul_cap"], props["pm.feature_names"]
    with pytest.raises(ValueError, match=r"rul_cap") as err:
        ModelMetadata.from_props(props)
    assert "feature_names" in str(err.value) and "models.train" in str(err.value)


# --- feature check ------------------------------------------------------------------------


def test_check_features_passes_when_the_flow_matches() -> None:
    meta = metadata(CFG)
    assert check_features(meta, (3, 6), True, 2) == CFG


@pytest.mark.parametrize(
    ("windows", "fft", "bands", "words"),
    [
        ((3, 12), True, 2, ["windows=[3, 6]", "windows=[3, 12]", "T24__last_12"]),
        ((3,), True, 1, ["expects", "windows=[3]"]),
        ((3, 6), False, 2, ["fft_enabled=False", "vib__fft_band0_6", "only in model"]),
        ((3, 6), True, 3, ["fft_bands=3", "vib__fft_band2_6", "only in flow"]),
    ],
)
def test_check_features_names_the_mismatch(
    windows: tuple[int, ...], fft: bool, bands: int, words: list[str]
) -> None:
    meta = metadata(CFG)
    with pytest.raises(ModelMismatchError) as err:
        check_features(meta, windows, fft, bands)
    msg = str(err.value)
    for word in ["'turbofan_engine'", f"{len(CFG.names)} features", "Retrain", *words]:
        assert word in msg, f"{word!r} not in {msg!r}"


def test_check_features_catches_a_reordered_feature_list() -> None:
    meta = metadata(CFG, feature_names=tuple(reversed(CFG.names)))
    with pytest.raises(ModelMismatchError):
        check_features(meta, (3, 6), True, 2)


# --- predict_batch without a model --------------------------------------------------------


def scored(eid: str, etype: str, ts: int, level: float, features: bool = True) -> Scored:
    vec = np.zeros(len(CFG.names)) if features else None
    reading = Reading(eid, etype, ts, {"T24": 1.0})
    return Scored(reading, vec, anomaly_score=0.25, anomaly_level=level, top_sensors=("T24",))


def test_predict_batch_without_a_model_uses_health_only() -> None:
    items = [
        scored("a", "pump", 1, 0.5),
        scored("b", "pump", 2, 0.9, features=False),  # no features due: no prediction
        scored("c", "pump", 3, 1.0),
        scored("d", "fan", 4, 0.8),
    ]
    asked: list[str] = []

    def model_for(etype: str) -> RulModel | None:
        asked.append(etype)
        return None

    th = Thresholds()
    preds = predict_batch(items, model_for, th, anomaly_weight=0.7)
    assert sorted(asked) == ["fan", "pump"]  # one look-up per type
    assert [p.equipment_id for p in preds] == ["a", "c", "d"]
    for p, item in zip(preds, [items[0], items[2], items[3]], strict=True):
        assert p.rul is p.rul_hours is p.rul_lower is p.rul_upper is None
        assert (p.model_name, p.model_version, p.rul_unit) == ("none", "none", "")
        assert p.health == health_score(1.0, item.anomaly_level, 0.7)
        assert p.status == status_for(None, p.health, th)
        assert (p.ts_ms, p.anomaly_score, p.top_sensors) == (item.reading.ts_ms, 0.25, ("T24",))
    assert [p.status for p in preds] == ["ok", "critical", "warning"]


# --- a real, tiny ONNX model --------------------------------------------------------------

N_TRAIN = 300


@pytest.fixture(scope="module")
def tiny_model() -> tuple[bytes, dict, ModelMetadata, np.ndarray]:
    """Gradient boosting (5 iterations) with quantile band, on targets that overshoot the cap
    on both sides so clipping matters; exported the way models.train does it."""
    rng = np.random.default_rng(0)
    n_f = len(CFG.names)
    x = as_float32_grid(5.0 + rng.normal(size=(N_TRAIN, n_f)))  # means far from 0
    y = 100.0 * (x[:, 0] - 5.0) + 60.0  # roughly -240 .. 360 against a cap of 125
    ests = {
        "rul": HistGradientBoostingRegressor(max_iter=5, learning_rate=0.5, random_state=0),
        "rul_lower": HistGradientBoostingRegressor(
            loss="quantile", quantile=0.1, max_iter=5, learning_rate=0.5, random_state=0
        ),
        "rul_upper": HistGradientBoostingRegressor(
            loss="quantile", quantile=0.9, max_iter=5, learning_rate=0.5, random_state=0
        ),
    }
    for est in ests.values():
        est.fit(x, y)
        snap_thresholds(est)
    meta = metadata(CFG, feature_means=tuple(float(v) for v in x.mean(axis=0)))
    return export_onnx(ests, n_f, meta), ests, meta, x


def test_onnx_matches_sklearn(tiny_model) -> None:
    blob, ests, _meta, x = tiny_model
    assert parity(blob, ests, x) < 1e-3
    fresh = 5.0 + np.random.default_rng(1).normal(size=(200, x.shape[1]))
    assert parity(blob, ests, fresh) < 1e-3


def test_model_carries_its_metadata(tiny_model) -> None:
    blob, _ests, meta, _x = tiny_model
    model = RulModel(blob, version="7")
    assert model.meta == meta
    assert model.version == "7"


def test_predictions_are_clipped_to_the_cap_and_banded(tiny_model) -> None:
    blob, ests, meta, x = tiny_model
    model = RulModel(blob, version="1")
    rul, lower, upper = model.predict(x)
    assert rul.shape == lower.shape == upper.shape == (N_TRAIN,)
    raw = ests["rul"].predict(x)
    assert raw.min() < 0.0 and raw.max() > meta.rul_cap  # so clipping is exercised
    np.testing.assert_allclose(rul, np.clip(raw, 0.0, meta.rul_cap), atol=1e-3)
    for arr in (rul, lower, upper):
        assert np.isfinite(arr).all()
        assert (arr >= 0.0).all() and (arr <= meta.rul_cap).all()
    assert (lower <= rul).all() and (rul <= upper).all()
    assert (lower < upper).any()  # the band is a band, not the point


def test_single_row_prediction(tiny_model) -> None:
    blob, _ests, _meta, x = tiny_model
    model = RulModel(blob, version="1")
    rul, lower, upper = model.predict(x[5])
    batch = model.predict(x[:10])
    assert rul.shape == (1,)
    assert (rul[0], lower[0], upper[0]) == (batch[0][5], batch[1][5], batch[2][5])


def test_nan_features_are_imputed_with_training_means(tiny_model) -> None:
    blob, _ests, meta, x = tiny_model
    model = RulModel(blob, version="1")
    rng = np.random.default_rng(2)
    holes = x[:50].copy()
    holes[rng.random(holes.shape) < 0.3] = np.nan
    holes[0, :] = np.nan  # nothing known at all
    got = model.predict(holes)
    filled = np.where(np.isnan(holes), np.asarray(meta.feature_means), holes)
    want = model.predict(filled)
    for g, w in zip(got, want, strict=True):
        assert not np.isnan(g).any()
        np.testing.assert_allclose(g, w, atol=1e-4)
    # the imputation matters: filling with zeros instead would change the predictions
    zeros = model.predict(np.where(np.isnan(holes), 0.0, holes))[0]
    assert np.abs(zeros - got[0]).max() > 1.0
    assert np.isnan(holes).any()  # the caller's array is left alone


def test_predict_batch_with_a_model(tiny_model) -> None:
    blob, _ests, meta, x = tiny_model
    model = RulModel(blob, version="3")
    items = [
        Scored(Reading(f"e{i}", "turbofan_engine", i, {"T24": 1.0}), x[i], 0.1, 0.5, ())
        for i in range(6)
    ]
    items.insert(2, scored("p", "pump", 99, 0.5))  # a type without a model
    th = Thresholds()
    preds = predict_batch(items, lambda t: model if t == "turbofan_engine" else None, th)
    assert [p.equipment_id for p in preds] == ["e0", "e1", "p", "e2", "e3", "e4", "e5"]
    rul, lower, upper = model.predict(x[:6])
    engine = [p for p in preds if p.equipment_type == "turbofan_engine"]
    for i, p in enumerate(engine):
        assert p.rul == pytest.approx(float(rul[i]))
        assert (p.rul_lower, p.rul_upper) == pytest.approx((float(lower[i]), float(upper[i])))
        assert p.rul_unit == "cycles"
        assert p.rul_hours == pytest.approx(p.rul * meta.hours_per_reading)
        assert p.health == pytest.approx(health_score(p.rul / meta.rul_cap, 0.5))
        assert p.status == status_for(p.rul_hours, p.health, th)
        assert (p.model_name, p.model_version) == (meta.model_name, "3")
    assert preds[2].rul is None and preds[2].model_name == "none"
