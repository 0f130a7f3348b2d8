"""Training: sensor choice, band calibration (conformalised quantiles), and the exported
model's metadata (normaliser, operating history, band offsets) as the flow will load it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from models.dataset import UnitHistory, conformal_offsets
from models.equipment import CMAPSS_SENSORS, CMAPSS_SETTINGS
from models.onnx_export import INPUT_NAME
from models.rul import ModelMismatchError, RulModel, calibrated_band, check_features
from models.train import (
    FeatureOptions,
    TrainParams,
    band_metrics,
    fit_feature_config,
    informative_sensors,
    main,
)

# --- band calibration ----------------------------------------------------------------------


def test_conformal_offsets_bring_a_too_narrow_band_to_its_level() -> None:
    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 100, 8000)
    true = pred + rng.normal(0, 10, 8000)
    lower, upper = pred - 5.0, pred + 5.0  # covers ~38%: far too narrow
    cal, ev = slice(0, 4000), slice(4000, None)
    lo, hi = conformal_offsets(lower[cal], upper[cal], true[cal], 0.8)
    assert lo > 0 and hi > 0
    miss_low = np.mean(true[ev] < lower[ev] - lo)
    miss_high = np.mean(true[ev] > upper[ev] + hi)
    assert miss_low == pytest.approx(0.1, abs=0.02)
    assert miss_high == pytest.approx(0.1, abs=0.02)


def test_conformal_offsets_shrink_a_too_wide_band_and_check_the_level() -> None:
    rng = np.random.default_rng(1)
    true = rng.normal(0, 1, 5000)
    lo, hi = conformal_offsets(np.full(5000, -10.0), np.full(5000, 10.0), true, 0.8)
    assert lo < -8 and hi < -8  # negative: move the bounds in
    assert np.mean((true >= -10 - lo) & (true <= 10 + hi)) == pytest.approx(0.8, abs=0.03)
    with pytest.raises(ValueError, match="band level"):
        conformal_offsets(np.zeros(3), np.zeros(3), np.zeros(3), 1.0)


def test_offsets_count_only_cases_the_shipped_band_can_miss() -> None:
    # separate quantile models cross the point now and then; the shipped band is stretched
    # to contain the point, so a true value between point and bound is never a miss
    rng = np.random.default_rng(3)
    n = 6000
    pred = rng.uniform(0, 125, n)
    true = np.clip(pred + rng.normal(0, 8, n), 0, 125)
    lower, upper = pred + rng.normal(0, 6, n), pred + rng.normal(0, 6, n)
    cal, ev = slice(0, n // 2), slice(n // 2, None)

    def coverage(offsets: tuple[float, float]) -> float:
        lo, hi = calibrated_band(pred[ev], lower[ev], upper[ev], offsets, 125.0)
        return float(np.mean((true[ev] >= lo) & (true[ev] <= hi)))

    naive = conformal_offsets(lower[cal], upper[cal], true[cal], 0.8)
    aware = conformal_offsets(lower[cal], upper[cal], true[cal], 0.8, pred[cal])
    assert aware[0] < naive[0] and aware[1] < naive[1]  # a narrower band...
    assert coverage(aware) == pytest.approx(0.8, abs=0.025)  # ...at the nominal level
    assert coverage(naive) > coverage(aware)


def test_cross_fitted_band_coverage_is_near_nominal_and_reports_the_raw_one() -> None:
    rng = np.random.default_rng(2)
    n = 5000
    pred = rng.uniform(0, 125, n)
    true = np.clip(pred + rng.normal(0, 8, n), 0, 125)
    lower, upper = pred - 6.0, pred + 6.0
    fold = rng.integers(0, 5, n)
    m = band_metrics(pred, true, lower, upper, fold, TrainParams(band_level=0.8))
    assert m["cv_band_coverage_raw"] < 0.6
    assert m["cv_band_coverage"] == pytest.approx(0.8, abs=0.03)
    assert m["cv_band_width"] > m["cv_band_width_raw"]
    assert m["band_offset_lower"] > 0 and m["band_offset_upper"] > 0


def test_calibrated_band_contains_the_point_and_stays_in_range() -> None:
    rul = np.array([0.0, 60.0, 125.0, 30.0])
    lower = np.array([5.0, 50.0, 118.0, 40.0])  # above the point in two rows
    upper = np.array([10.0, 80.0, 130.0, 35.0])
    lo, hi = calibrated_band(rul, lower, upper, (3.0, 4.0), 125.0)
    assert np.all(lo <= rul) and np.all(rul <= hi)
    assert np.all(lo >= 0) and np.all(hi <= 125)
    assert lo.tolist() == [0.0, 47.0, 115.0, 30.0]
    assert hi.tolist() == [14.0, 84.0, 125.0, 39.0]


# --- sensors and feature configuration ---------------------------------------------------


def test_sensors_constant_within_every_condition_are_dropped() -> None:
    from tests.test_conditions import wearing_units

    units = wearing_units(4, seed=1)
    # without condition normalisation every sensor moves with the condition: all are kept
    assert len(informative_sensors(units, None)) == len(CMAPSS_SENSORS)
    cfg = fit_feature_config("turbofan_engine", units, FeatureOptions((3, 6), fft=False))
    assert cfg.sensors == ("T24", "T30", "T50", "Ps30")
    assert cfg.conditions is not None and cfg.conditions.n_conditions == 3
    assert cfg.conditions.sensors == cfg.sensors
    assert cfg.conditions.settings == CMAPSS_SETTINGS
    everything = fit_feature_config(
        "turbofan_engine", units, FeatureOptions((3, 6), fft=False, sensors="all")
    )
    assert everything.sensors == CMAPSS_SENSORS
    off = fit_feature_config(
        "turbofan_engine", units, FeatureOptions((3, 6), fft=False, condition_norm="off")
    )
    assert off.conditions is None and off.sensors == CMAPSS_SENSORS


def test_a_fixed_feature_config_is_used_as_given() -> None:
    from models.train import feature_config

    fixed = feature_config("turbofan_engine", (3, 6), True, 4)  # as models.retrain builds it
    assert fixed.sensors == CMAPSS_SENSORS and fixed.conditions is None
    units = [UnitHistory("u", np.zeros((10, 21)), np.arange(10.0), np.zeros((10, 3)))]
    assert fit_feature_config("turbofan_engine", units, fixed) is fixed


def test_condition_norm_on_needs_settings() -> None:
    unit = UnitHistory("u", np.random.default_rng(0).normal(size=(20, 21)), np.arange(20.0))
    opts = FeatureOptions((3,), fft=False, condition_norm="on")
    with pytest.raises(ValueError, match="needs settings"):
        fit_feature_config("turbofan_engine", [unit], opts)
    auto = fit_feature_config("turbofan_engine", [unit], FeatureOptions((3,), fft=False))
    assert auto.conditions is None


# --- the whole command -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("train")
    args = [
        "--equipment-type", "turbofan_engine", "--units", "14", "--seed", "3",
        "--folds", "2", "--max-iter", "25", "--quantile-max-iter", "25",
        "--windows", "5,15", "--condition-norm", "on", "--operating-history", "on",
        "--sensors", "informative",
        "--no-mlflow", "--out", str(out / "bundle"), "--metrics-out", str(out / "m.json"),
    ]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "m.json").read_text())
    return out / "bundle" / "turbofan_engine.onnx", metrics


def test_training_reports_cv_accuracy_and_calibrated_band(trained) -> None:
    _, m = trained
    for key in ("cv_rmse", "cv_nasa_score", "cv_nasa_per_unit", "cv_band_coverage",
                "cv_band_width", "cv_band_coverage_raw", "onnx_parity_max_abs_diff"):  # fmt: skip
        assert np.isfinite(m[f"turbofan_engine.{key}"]), key
    assert 0.0 <= m["turbofan_engine.cv_band_coverage"] <= 1.0
    assert m["turbofan_engine.onnx_parity_max_abs_diff"] < 1e-3
    assert m["turbofan_engine.cv_units"] == 14


def test_exported_metadata_carries_normaliser_history_and_band(trained) -> None:
    path, m = trained
    model = RulModel.from_file(path, "v1")
    meta = model.meta
    assert meta.conditions is not None and meta.conditions.n_conditions == 1  # forced on
    assert meta.operating_history and meta.feature_names[-1] == "history__age_all"
    assert meta.feature_names == meta.feature_config.names
    assert "T2" not in meta.sensors  # constant in the simulated turbofan
    assert meta.band_offsets == (
        m["turbofan_engine.band_offset_lower"],
        m["turbofan_engine.band_offset_upper"],
    )
    assert meta.band_level == 0.8


def test_rul_model_widens_the_raw_quantiles_by_the_offsets(trained) -> None:
    path, _ = trained
    model = RulModel.from_file(path, "v1")
    x = np.random.default_rng(0).normal(size=(50, len(model.meta.feature_names)))
    x[:, -1] = np.arange(50) * 5.0  # age
    raw = dict(
        zip(
            [o.name for o in model.session.get_outputs()],
            model.session.run(None, {INPUT_NAME: x.astype(np.float32)}),
            strict=True,
        )
    )
    rul, lower, upper = model.predict(x)
    expected = calibrated_band(
        rul, raw["rul_lower"].ravel(), raw["rul_upper"].ravel(), model.meta.band_offsets, 125.0
    )
    np.testing.assert_allclose(lower, expected[0], rtol=1e-6)
    np.testing.assert_allclose(upper, expected[1], rtol=1e-6)


def test_a_model_exported_before_the_new_metadata_still_loads(trained, tmp_path) -> None:
    path, _ = trained
    proto = onnx.load_model_from_string(path.read_bytes())
    keep = [p for p in proto.metadata_props if p.key.split(".", 1)[1] not in
            ("conditions", "operating_history", "band_offsets", "band_level")]  # fmt: skip
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    old = RulModel(proto.SerializeToString(), "old")
    assert old.meta.conditions is None and not old.meta.operating_history
    assert old.meta.band_offsets == (0.0, 0.0)
    # stripped of operating_history it no longer rebuilds its own feature list (the age
    # feature is missing): the flow's check refuses it instead of mis-feeding it
    assert old.meta.feature_config.names != old.meta.feature_names
    with pytest.raises(ModelMismatchError, match="history__age_all"):
        check_features(old.meta, old.meta.windows, False, 4)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--band-level", "1.5", "--no-mlflow"])
    with pytest.raises(SystemExit):
        main(["--condition-norm", "sometimes", "--no-mlflow"])
