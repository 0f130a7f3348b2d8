"""Operating-condition normalisation: learning it, shipping it in model metadata, and
applying it identically offline (history_features) and in the stream (EquipmentState)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.anomaly import AnomalyDetector
from models.conditions import ConditionNormalizer, find_conditions, fit_normalizer
from models.equipment import CMAPSS_SENSORS, CMAPSS_SETTINGS
from models.equipment_state import EquipmentState, Scored
from models.features import FeatureConfig, history_features
from models.rul import ModelMetadata, ModelMismatchError, check_features
from models.schemas import Reading

# three well-separated operating points (altitude kft, Mach, throttle), like FD002's six
CENTRES = np.array([[0.0, 0.0, 100.0], [20.0, 0.7, 100.0], [42.0, 0.84, 60.0]])


def multi_condition_units(n_units: int, seed: int, n_conditions: int = 3):
    """Simulated turbofan histories ``(id, settings, sensors, rul)`` flown at a random
    operating point each cycle: settings jitter around the point and every sensor moves by
    a condition-dependent offset far larger than its wear signal."""
    from connectors.simulator import simulate_units

    rng = np.random.default_rng(seed)
    span = np.abs(np.array([2000.0, 5.0, 50.0, 80.0, 0.1, 1.0, 30.0, 20.0, 300.0, 0.05, 3.0,
                            30.0, 20.0, 300.0, 0.5, 0.002, 10.0, 20.0, 1.0, 2.0, 1.0]))  # fmt: skip
    sign = rng.choice([-1.0, 1.0], len(span))
    offsets = (np.arange(n_conditions) - 0.8)[:, None] * sign * span
    out = []
    for uid, _settings, sensors, rul in simulate_units("turbofan_engine", n_units, seed):
        cond = rng.integers(0, n_conditions, len(rul))
        settings = CENTRES[cond] + rng.normal(0.0, 0.002, (len(rul), 3)) * [1, 0.1, 0]
        out.append((uid, settings, sensors + offsets[cond], rul))
    return out


def stack(units) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([u[1] for u in units]), np.concatenate([u[2] for u in units])


@pytest.fixture(scope="module")
def units():
    return multi_condition_units(6, seed=3)


@pytest.fixture(scope="module")
def normalizer(units) -> ConditionNormalizer:
    s, x = stack(units)
    norm = fit_normalizer(s, x, CMAPSS_SETTINGS, CMAPSS_SENSORS, "auto")
    assert norm is not None
    return norm


# --- learning the conditions ---------------------------------------------------------------


def test_finds_the_operating_points_and_orders_them_by_frequency(units) -> None:
    s, _ = stack(units)
    centres, scale = find_conditions(s)
    assert len(centres) == 3
    nearest = np.argmin(np.abs(centres[:, None, 0] - CENTRES[None, :, 0]), axis=1)
    np.testing.assert_allclose(centres, CENTRES[nearest], atol=0.01)
    share = [
        np.mean(np.argmin(np.abs(s[:, 0, None] - centres[:, 0]), axis=1) == c) for c in range(3)
    ]
    assert share == sorted(share, reverse=True)
    again, scale2 = find_conditions(s)
    np.testing.assert_array_equal(again, centres)  # deterministic
    np.testing.assert_array_equal(scale2, scale)


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(
            np.random.default_rng(0).normal(0, 0.002, (4000, 3)) * [1, 0.1, 0] + [0, 0, 100],
            id="FD001-noise",
        ),
        pytest.param(np.random.default_rng(1).uniform(0, 42, (4000, 1)), id="continuous"),
        pytest.param(np.full((500, 2), 3.0), id="constant"),
        pytest.param(np.repeat(np.arange(1470.0, 1491.0), 50)[:, None], id="21-speeds"),
    ],
)
def test_noise_or_a_continuum_of_settings_is_one_condition(settings: np.ndarray) -> None:
    centres, _ = find_conditions(settings)
    assert len(centres) == 1
    np.testing.assert_allclose(centres[0], settings.mean(axis=0))
    x = np.random.default_rng(2).normal(size=(len(settings), 2))
    names = [f"s{i}" for i in range(settings.shape[1])]
    assert fit_normalizer(settings, x, names, ("a", "b"), "auto") is None
    on = fit_normalizer(settings, x, names, ("a", "b"), "on")
    assert on is not None and on.n_conditions == 1
    np.testing.assert_allclose(on.normalise(x, on.assign(settings)).std(axis=0), 1.0)
    assert fit_normalizer(settings, x, names, ("a", "b"), "off") is None


def test_each_condition_is_standardised(units, normalizer: ConditionNormalizer) -> None:
    s, x = stack(units)
    cond = normalizer.assign(s)
    z = normalizer.normalise(x, cond)
    varying = x.std(axis=0) > 0
    for c in range(normalizer.n_conditions):
        rows = z[cond == c]
        np.testing.assert_allclose(rows.mean(axis=0), 0.0, atol=1e-9)
        sd = rows.std(axis=0)
        assert np.all(np.isclose(sd, 1.0) | np.isclose(sd, 0.0))
    # the raw data is dominated by the condition; normalised, it is not
    raw_between = np.var([x[cond == c][:, varying].mean(axis=0) for c in range(3)], axis=0)
    assert np.all(raw_between > 10 * x[cond == 0][:, varying].var(axis=0))


def test_bad_mode_and_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="auto, on or off"):
        fit_normalizer(np.zeros((3, 1)), np.zeros((3, 1)), ("s",), ("a",), "always")
    with pytest.raises(ValueError, match="match their names"):
        fit_normalizer(np.zeros((3, 2)), np.zeros((3, 1)), ("s",), ("a",), "on")
    with pytest.raises(ValueError, match="positive"):
        ConditionNormalizer(("s",), ("a",), (1.0,), ((0.0,),), ((0.0,),), ((0.0,),))


# --- one implementation, two paths -------------------------------------------------------


def test_json_round_trip_is_exact(normalizer: ConditionNormalizer, units) -> None:
    back = ConditionNormalizer.from_json_dict(json.loads(json.dumps(normalizer.to_json_dict())))
    assert back == normalizer
    s, x = stack(units)
    np.testing.assert_array_equal(back.assign(s), normalizer.assign(s))
    np.testing.assert_array_equal(
        back.normalise(x, back.assign(s)), normalizer.normalise(x, normalizer.assign(s))
    )


def test_single_reading_path_equals_batch_path_bit_for_bit(normalizer, units) -> None:
    s, x = stack(units)
    rng = np.random.default_rng(4)
    s = s[:400].copy()
    s[rng.random(s.shape) < 0.2] = np.nan  # missing settings are ignored by both
    s[5] = np.nan  # nothing known: condition 0
    s[6] = (CENTRES[0] + CENTRES[1]) / 2  # halfway: both pick the same one
    batch = normalizer.assign(s)
    assert batch[5] == 0
    for i in range(len(s)):
        c = normalizer.assign_one(s[i])
        assert c == batch[i], i
        np.testing.assert_array_equal(
            normalizer.normalise_one(x[i], c),
            normalizer.normalise(x[i : i + 1], batch[i : i + 1])[0],
        )


def stream(cfg: FeatureConfig, settings: np.ndarray, sensors: np.ndarray, drop=None):
    state = EquipmentState(cfg, AnomalyDetector(n_trees=2, height=2, window_size=5, warmup=5),
                           lateness_ms=0)  # fmt: skip
    out = []
    for t in range(len(sensors)):
        names = cfg.conditions.settings if cfg.conditions else CMAPSS_SETTINGS
        st = {n: float(v) for j, (n, v) in enumerate(zip(names, settings[t], strict=True))
              if drop is None or not drop[t, j]}  # fmt: skip
        reading = Reading("u1", "turbofan_engine", 1000 * (t + 1),
                          dict(zip(cfg.sensors, sensors[t].tolist(), strict=True)), st)  # fmt: skip
        scored = state.ingest(reading)
        assert isinstance(scored, Scored)
        out.append(scored.features)
    return np.array(out)


@pytest.mark.parametrize("history", [False, True])
def test_stream_features_equal_offline_features_with_the_normaliser(
    normalizer, units, history: bool
) -> None:
    cfg = FeatureConfig(CMAPSS_SENSORS, (5, 12), conditions=normalizer, operating_history=history)
    _, settings, sensors, _ = units[0]
    settings, sensors = settings[:80], sensors[:80]
    offline = history_features(sensors, cfg, settings=settings)
    online = stream(cfg, settings, sensors)
    assert online.shape == offline.shape == (80, len(cfg.names))
    np.testing.assert_array_equal(online, offline)
    if history:
        names = list(cfg.names)
        assert online[-1, names.index("history__age_all")] == 80
        shares = online[-1, [names.index(f"history__share_c{c}_all") for c in range(3)]]
        assert shares.sum() == pytest.approx(1.0)
    # the normaliser changed what entered the window
    plain = history_features(sensors, FeatureConfig(CMAPSS_SENSORS, (5, 12)))
    assert not np.allclose(plain, offline[:, : plain.shape[1]])


def test_missing_settings_keep_their_last_value_in_the_stream(normalizer, units) -> None:
    cfg = FeatureConfig(CMAPSS_SENSORS, (4, 9), conditions=normalizer, operating_history=True)
    _, settings, sensors, _ = units[1]
    settings, sensors = settings[:60], sensors[:60]
    drop = np.random.default_rng(5).random(settings.shape) < 0.3
    drop[0] = False
    filled = settings.copy()
    for t in range(1, len(filled)):
        filled[t, drop[t]] = filled[t - 1, drop[t]]
    np.testing.assert_array_equal(
        stream(cfg, settings, sensors, drop), history_features(sensors, cfg, settings=filled)
    )


def test_offline_features_need_settings_when_normalising(normalizer) -> None:
    cfg = FeatureConfig(CMAPSS_SENSORS, (2, 3), conditions=normalizer)
    with pytest.raises(ValueError, match="needs settings"):
        history_features(np.zeros((4, len(CMAPSS_SENSORS))), cfg)
    with pytest.raises(ValueError, match="sensors differ"):
        FeatureConfig(CMAPSS_SENSORS[:3], (2,), conditions=normalizer)


def test_equipment_state_pickled_before_the_normaliser_existed_still_works() -> None:
    import pickle

    cfg = FeatureConfig(("a",), (2, 3))
    state = EquipmentState(cfg, AnomalyDetector(window_size=5, warmup=5), lateness_ms=0)
    state.ingest(Reading("u", "pump", 1000, {"a": 1.0}))
    old = pickle.loads(pickle.dumps(state))
    for name in ("conditions", "operating_history", "_plan"):  # as an older release pickled it
        old.config.__dict__.pop(name, None)
    assert "_settings" not in old.__dict__ and "_counts" not in old.__dict__
    out = old.ingest(Reading("u", "pump", 2000, {"a": 2.0}))
    assert isinstance(out, Scored) and out.features.shape == (len(cfg.names),)


# --- metadata ------------------------------------------------------------------------------


def meta(**extra) -> ModelMetadata:
    cfg = FeatureConfig(CMAPSS_SENSORS, (5, 12), **extra)
    return ModelMetadata(
        model_name="m",
        equipment_type="turbofan_engine",
        feature_names=cfg.names,
        sensors=cfg.sensors,
        windows=cfg.windows,
        fft_sensors=(),
        fft_bands=4,
        rul_unit="cycles",
        rul_cap=125.0,
        hours_per_reading=1.0,
        feature_means=(0.0,) * len(cfg.names),
        conditions=extra.get("conditions"),
        operating_history=extra.get("operating_history", False),
    )


def test_metadata_round_trips_the_normaliser(normalizer) -> None:
    m = meta(conditions=normalizer, operating_history=True)
    props = m.to_props()
    assert all(isinstance(v, str) for v in props.values())
    back = ModelMetadata.from_props(props)
    assert back == m
    assert back.feature_config == FeatureConfig(CMAPSS_SENSORS, (5, 12), (), 4, normalizer, True)
    assert back.feature_config.names == m.feature_names


def test_metadata_without_the_new_fields_means_no_normalisation() -> None:
    m = meta()
    old_keys = ("conditions", "operating_history", "band_offsets", "band_level")
    props = {k: v for k, v in m.to_props().items() if k.split(".", 1)[1] not in old_keys}
    back = ModelMetadata.from_props(props)
    assert back.conditions is None and not back.operating_history
    assert back.band_offsets == (0.0, 0.0)
    assert back.feature_config == FeatureConfig(CMAPSS_SENSORS, (5, 12))
    assert ModelMetadata.from_props(m.to_props()).conditions is None  # "null" too
    with pytest.raises(ValueError, match="lacks"):
        ModelMetadata.from_props({k: v for k, v in props.items() if not k.endswith("windows")})


def test_check_features_refuses_a_mismatched_flow_config(normalizer) -> None:
    m = meta(conditions=normalizer, operating_history=True)
    assert check_features(m, (5, 12), True, 4) == m.feature_config
    assert check_features(m, (5, 12), False, 4, operating_history=True) == m.feature_config
    with pytest.raises(ModelMismatchError, match="windows"):
        check_features(m, (10, 30, 60), True, 4)
    with pytest.raises(ModelMismatchError, match="operating_history=False"):
        check_features(m, (5, 12), True, 4, operating_history=False)


# --- it matters ------------------------------------------------------------------------------


def wearing_units(n_units: int, seed: int) -> list:
    """Clean synthetic run-to-failure units, as ``UnitHistory`` in the turbofan sensor order:
    four noisy sensors drift linearly over the last 150 cycles, the rest are constant, and
    each cycle runs at one of three operating points, which shifts every sensor (and scales
    the drift and noise) by far more than the wear signal."""
    from models.dataset import UnitHistory

    rng = np.random.default_rng(seed)
    wearing = [CMAPSS_SENSORS.index(s) for s in ("T24", "T30", "T50", "Ps30")]
    base = np.array([518.7, 642.0, 1585.0, 1400.0, 14.6, 21.6, 554.0, 2388.0, 9050.0, 1.3,
                     47.3, 522.0, 2388.0, 8130.0, 8.4, 0.03, 392.0, 2388.0, 100.0, 38.9,
                     23.3])  # fmt: skip
    gain, noise = np.array([3.0, 40.0, 60.0, 2.0]), np.array([1.0, 12.0, 15.0, 0.6])
    shift = (np.abs(base) * 0.05 + 1.0) * rng.choice([-1, 1], (3, len(base)))
    shift *= rng.uniform(0.5, 1.5, shift.shape)  # each condition moves each sensor its own way
    gain_in = np.array([[1.0], [0.8], [1.3]])  # and the signal and noise scale with it
    out = []
    for i in range(n_units):
        life = int(rng.integers(150, 300))
        t = np.arange(1, life + 1)
        x = np.tile(base, (life, 1))
        cond = rng.integers(0, 3, life)
        wear = np.clip(1.0 - (life - t) / 150.0, 0.0, 1.0)  # shows over the last 150 cycles
        drift = gain * wear[:, None] + rng.normal(0, noise, (life, 4))
        x[:, wearing] += drift * gain_in[cond]
        x += shift[cond]
        settings = CENTRES[cond] + rng.normal(0.0, 0.002, (life, 3)) * [1, 0.1, 0]
        out.append(UnitHistory(f"u{i}", x, (life - t).astype(float), settings))
    return out


def test_normalisation_makes_a_measurable_difference_on_multi_condition_data() -> None:
    from models.train import FeatureOptions, TrainParams, cross_validate

    data = wearing_units(24, seed=8)
    p = TrainParams(folds=3, stride=2, max_iter=60, quantiles=False, seed=1)
    rmse = {}
    for mode in ("on", "off"):
        opts = FeatureOptions((5, 20), fft=False, condition_norm=mode)
        rmse[mode] = cross_validate("turbofan_engine", data, opts, p, 0.0)["cv_rmse"]
    assert rmse["on"] < 0.8 * rmse["off"], rmse
