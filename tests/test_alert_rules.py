"""Alert rule state machine: transitions, damping, ids, pickling, and a property test."""

from __future__ import annotations

import hashlib
import math
import pickle
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerting.rules import (
    ANOMALY_HIGH,
    HEALTH_LOW,
    RUL_LOW,
    AlertState,
    Thresholds,
    evaluate,
)
from models.schemas import Alert, Prediction

T0_MS = 1_795_770_000_000  # 2026-11-27T09:00:00Z
# The values these tests were written against (explicit, so changing a default does not
# silently change what they check).
TH = Thresholds(
    anomaly_warning=0.9,
    anomaly_critical=0.98,
    anomaly_min_consecutive=3,
    cooldown_s=3600.0,
    resolve_dwell_s=0.0,
)


def pred(t_s: float = 0.0, **kw: Any) -> Prediction:
    """A healthy prediction at T0 + t_s seconds, with fields replaced by ``kw``."""
    fields: dict[str, Any] = {
        "equipment_id": "turbofan-0007",
        "equipment_type": "turbofan_engine",
        "ts_ms": T0_MS + round(t_s * 1000),
        "rul": 200.0,
        "rul_unit": "hours",
        "rul_hours": 200.0,
        "rul_lower": None,
        "rul_upper": None,
        "health": 0.95,
        "anomaly_score": 0.1,
        "status": "ok",
        "model_name": "rul_gbr",
        "model_version": "3",
        "top_sensors": ("T24", "T50"),
    }
    fields.update(kw)
    return Prediction(**fields)


def run(state: AlertState, th: Thresholds = TH, **series: list[Any]) -> list[list[Alert]]:
    """Evaluate one prediction per index of the given series, one minute apart."""
    n = len(next(iter(series.values())))
    out = []
    for i in range(n):
        kw = {k: v[i] for k, v in series.items()}
        out.append(evaluate(state, pred(60.0 * i, **kw), th))
    return out


def brief(alerts: list[Alert]) -> list[tuple[str, str, str]]:
    return [(a.rule, a.state, a.severity) for a in alerts]


# --- transitions ---------------------------------------------------------------------------


def test_healthy_prediction_emits_nothing() -> None:
    state = AlertState()
    assert evaluate(state, pred(), TH) == []
    assert state.active() == {}


def test_none_to_warning_fires() -> None:
    state = AlertState()
    (a,) = evaluate(state, pred(health=0.6), TH)
    assert (a.rule, a.state, a.severity) == (HEALTH_LOW, "firing", "warning")
    assert (a.value, a.threshold) == (0.6, 0.7)
    assert a.ts_ms == T0_MS
    assert a.message == "turbofan-0007: health 0.600 is below the warning threshold 0.7"
    assert re.fullmatch(r"[0-9a-f]{16}", a.alert_id)
    assert state.active() == {HEALTH_LOW: "warning"}


def test_none_to_critical_fires_at_critical() -> None:
    (a,) = evaluate(AlertState(), pred(health=0.2), TH)
    assert (a.state, a.severity, a.threshold) == ("firing", "critical", 0.4)


def test_threshold_itself_does_not_fire() -> None:
    assert evaluate(AlertState(), pred(health=0.7, rul_hours=72.0), TH) == []


def test_sustained_severity_is_deduplicated() -> None:
    out = run(AlertState(), health=[0.6, 0.55, 0.5, 0.65, 0.45])
    assert [brief(x) for x in out] == [
        [(HEALTH_LOW, "firing", "warning")],
        [],
        [],
        [],
        [],
    ]


def test_warning_to_critical_escalates_once() -> None:
    out = run(AlertState(), health=[0.6, 0.3, 0.2, 0.35])
    assert [brief(x) for x in out] == [
        [(HEALTH_LOW, "firing", "warning")],
        [(HEALTH_LOW, "escalated", "critical")],
        [],
        [],
    ]
    assert out[1][0].threshold == 0.4


def test_deescalation_emits_nothing_and_resolve_keeps_episode_severity() -> None:
    state = AlertState()
    out = run(state, health=[0.3, 0.6, 0.65, 0.9])
    assert [brief(x) for x in out] == [
        [(HEALTH_LOW, "firing", "critical")],
        [],
        [],
        [(HEALTH_LOW, "resolved", "critical")],
    ]
    assert state.active() == {}


def test_resolved_message_and_threshold() -> None:
    out = run(AlertState(), rul_hours=[20.5, 100.0])
    resolved = out[1][0]
    assert (resolved.state, resolved.severity) == ("resolved", "critical")
    assert resolved.threshold == pytest.approx(79.2)
    assert resolved.message == (
        "turbofan-0007: predicted RUL 100.0 h is back above 79.2 h "
        "(warning threshold 72 h + 10% hysteresis)"
    )


def test_hysteresis_holds_the_episode_until_past_the_margin() -> None:
    # warning 0.7, hysteresis 10% -> clears at >= 0.77
    out = run(AlertState(), health=[0.6, 0.72, 0.69, 0.76, 0.77])
    assert [brief(x) for x in out] == [
        [(HEALTH_LOW, "firing", "warning")],
        [],
        [],
        [],
        [(HEALTH_LOW, "resolved", "warning")],
    ]


def test_hysteresis_for_higher_is_worse_clears_below_the_margin() -> None:
    th = Thresholds(anomaly_warning=0.9, anomaly_critical=0.98, anomaly_min_consecutive=1)
    # warning 0.9 -> clears at <= 0.81
    out = run(AlertState(), th, anomaly_score=[0.95, 0.85, 0.82, 0.81])
    assert [brief(x) for x in out] == [
        [(ANOMALY_HIGH, "firing", "warning")],
        [],
        [],
        [(ANOMALY_HIGH, "resolved", "warning")],
    ]


def test_flapping_around_the_threshold_fires_once() -> None:
    out = run(AlertState(), health=[0.69, 0.71, 0.69, 0.71, 0.69, 0.71])
    assert sum(len(x) for x in out) == 1


def test_without_hysteresis_the_threshold_clears() -> None:
    th = Thresholds(hysteresis=0.0, cooldown_s=0.0, resolve_dwell_s=0.0)
    out = run(AlertState(), th, health=[0.6, 0.7, 0.69])
    assert [brief(x) for x in out] == [
        [(HEALTH_LOW, "firing", "warning")],
        [(HEALTH_LOW, "resolved", "warning")],
        [(HEALTH_LOW, "firing", "warning")],
    ]


# --- cooldown ------------------------------------------------------------------------------


def test_new_warning_episode_within_cooldown_is_held_back_then_fires_when_it_ends() -> None:
    state = AlertState()
    assert brief(evaluate(state, pred(0, health=0.6), TH)) == [(HEALTH_LOW, "firing", "warning")]
    resolved = evaluate(state, pred(600, health=0.9), TH)
    assert brief(resolved) == [(HEALTH_LOW, "resolved", "warning")]
    # 10 min after the resolve: a new episode is tracked but not announced
    assert evaluate(state, pred(1200, health=0.6), TH) == []
    assert state.active() == {HEALTH_LOW: "warning"}
    assert evaluate(state, pred(600 + 3599, health=0.6), TH) == []
    # still active when the cooldown is over: the held-back firing goes out now
    (late,) = evaluate(state, pred(600 + 3600, health=0.6), TH)
    assert (late.state, late.severity) == ("firing", "warning")
    assert late.evidence["episode_start_ts_ms"] == T0_MS + 1_200_000
    assert evaluate(state, pred(600 + 3700, health=0.6), TH) == []


def test_held_back_firing_needs_the_value_still_beyond_warning() -> None:
    state = AlertState()
    evaluate(state, pred(0, health=0.6), TH)
    evaluate(state, pred(60, health=0.9), TH)  # resolved
    assert evaluate(state, pred(120, health=0.6), TH) == []  # held back
    # cooldown over, but the value sits in the hysteresis band: nothing to announce
    assert evaluate(state, pred(60 + 3600, health=0.75), TH) == []
    assert brief(evaluate(state, pred(60 + 3660, health=0.65), TH)) == [
        (HEALTH_LOW, "firing", "warning")
    ]


def test_episode_after_cooldown_fires_at_once() -> None:
    state = AlertState()
    evaluate(state, pred(0, health=0.6), TH)
    evaluate(state, pred(60, health=0.9), TH)
    assert brief(evaluate(state, pred(60 + 3600, health=0.6), TH)) == [
        (HEALTH_LOW, "firing", "warning")
    ]


def test_escalation_during_cooldown_goes_out_as_firing() -> None:
    state = AlertState()
    evaluate(state, pred(0, health=0.6), TH)
    evaluate(state, pred(60, health=0.9), TH)  # resolved
    assert evaluate(state, pred(120, health=0.6), TH) == []  # held back
    (esc,) = evaluate(state, pred(180, health=0.3), TH)
    # nobody heard of this episode yet, so it opens with "firing", at critical
    assert (esc.state, esc.severity) == ("firing", "critical")
    assert brief(evaluate(state, pred(240, health=0.95), TH)) == [
        (HEALTH_LOW, "resolved", "critical")
    ]


def test_critical_onset_is_never_held_back_by_cooldown() -> None:
    state = AlertState()
    evaluate(state, pred(0, health=0.6), TH)
    evaluate(state, pred(60, health=0.9), TH)
    assert brief(evaluate(state, pred(120, health=0.1), TH)) == [(HEALTH_LOW, "firing", "critical")]


def test_silent_episode_ends_silently_and_does_not_extend_cooldown() -> None:
    state = AlertState()
    evaluate(state, pred(0, health=0.6), TH)
    evaluate(state, pred(60, health=0.9), TH)  # resolved at t=60
    assert evaluate(state, pred(120, health=0.6), TH) == []  # held back
    assert evaluate(state, pred(180, health=0.9), TH) == []  # clears: no "resolved"
    assert state.active() == {}
    # the cooldown still counts from t=60, not from t=180
    assert brief(evaluate(state, pred(60 + 3600, health=0.6), TH)) == [
        (HEALTH_LOW, "firing", "warning")
    ]


def test_cooldown_is_per_rule() -> None:
    state = AlertState()
    evaluate(state, pred(0, health=0.6), TH)
    evaluate(state, pred(60, health=0.9), TH)
    assert brief(evaluate(state, pred(120, rul_hours=50.0), TH)) == [(RUL_LOW, "firing", "warning")]


# --- anomaly consecutive count ---------------------------------------------------------------


def test_anomaly_needs_consecutive_scores_above_warning() -> None:
    out = run(AlertState(), anomaly_score=[0.95, 0.95, 0.95, 0.96])
    assert [brief(x) for x in out] == [
        [],
        [],
        [(ANOMALY_HIGH, "firing", "warning")],
        [],
    ]
    assert out[2][0].message == (
        "turbofan-0007: anomaly score 0.950 is above the warning threshold 0.9 "
        "(3 consecutive predictions)"
    )


def test_single_noisy_anomaly_score_is_not_an_alert() -> None:
    out = run(AlertState(), anomaly_score=[0.99, 0.2, 0.99, 0.99, 0.3, 0.999])
    assert all(x == [] for x in out)


def test_anomaly_streak_reaching_critical_fires_at_critical() -> None:
    out = run(AlertState(), anomaly_score=[0.95, 0.99, 0.99])
    assert brief(out[2]) == [(ANOMALY_HIGH, "firing", "critical")]


def test_anomaly_escalation_also_needs_the_streak() -> None:
    state = AlertState()
    out = run(state, anomaly_score=[0.95, 0.95, 0.95, 0.85, 0.99, 0.99, 0.99])
    assert [brief(x) for x in out] == [
        [],
        [],
        [(ANOMALY_HIGH, "firing", "warning")],
        [],  # 0.85 resets the streak but does not clear (clear level 0.81)
        [],
        [],
        [(ANOMALY_HIGH, "escalated", "critical")],
    ]


def test_anomaly_min_consecutive_one_fires_at_once() -> None:
    th = Thresholds(anomaly_warning=0.9, anomaly_critical=0.98, anomaly_min_consecutive=1)
    assert brief(evaluate(AlertState(), pred(anomaly_score=0.99), th)) == [
        (ANOMALY_HIGH, "firing", "critical")
    ]


# --- RUL specifics -------------------------------------------------------------------------


def test_rul_message_matches_the_documented_sentence() -> None:
    (a,) = evaluate(AlertState(), pred(rul=20.5, rul_hours=20.5), TH)
    assert a.message == "turbofan-0007: predicted RUL 20.5 h is below the critical threshold 24 h"
    assert (a.rule, a.value, a.threshold) == (RUL_LOW, 20.5, 24.0)


def test_rul_none_skips_the_rule() -> None:
    state = AlertState()
    out = run(state, rul=[None] * 3, rul_hours=[None] * 3, health=[0.6, 0.6, 0.6])
    assert [brief(x) for x in out] == [[(HEALTH_LOW, "firing", "warning")], [], []]
    assert RUL_LOW not in state.rules


def test_missing_rul_neither_fires_nor_resolves_an_active_episode() -> None:
    state = AlertState()
    out = run(state, rul_hours=[50.0, None, None, 100.0])
    assert [brief(x) for x in out] == [
        [(RUL_LOW, "firing", "warning")],
        [],
        [],
        [(RUL_LOW, "resolved", "warning")],
    ]


def test_rul_lower_bound_is_used_only_when_asked() -> None:
    # 40 cycles = 80 h; lower bound 30 cycles = 60 h (below the 72 h warning threshold)
    p = pred(rul=40.0, rul_unit="cycles", rul_hours=80.0, rul_lower=30.0, rul_upper=50.0)
    assert evaluate(AlertState(), p, TH) == []
    (a,) = evaluate(AlertState(), p, Thresholds(use_rul_lower_bound=True))
    assert (a.rule, a.severity) == (RUL_LOW, "warning")
    assert a.value == pytest.approx(60.0)
    assert "predicted RUL lower bound 60.0 h" in a.message


def test_rul_lower_bound_in_hours_and_absent() -> None:
    th = Thresholds(use_rul_lower_bound=True, resolve_dwell_s=0.0)
    (a,) = evaluate(AlertState(), pred(rul=30.0, rul_hours=30.0, rul_lower=20.0), th)
    assert (a.severity, a.value) == ("critical", 20.0)
    (b,) = evaluate(AlertState(), pred(rul=30.0, rul_hours=30.0, rul_lower=None), th)
    assert (b.severity, b.value) == ("warning", 30.0)
    assert "lower bound" not in b.message


def test_evidence_names_the_prediction() -> None:
    p = pred(rul=10.0, rul_unit="cycles", rul_hours=20.0, health=0.33333, anomaly_score=0.5)
    alerts = evaluate(AlertState(), p, TH)
    assert [a.rule for a in alerts] == [RUL_LOW, HEALTH_LOW]
    ev = alerts[0].evidence
    assert ev["rul"] == 10.0 and ev["rul_unit"] == "cycles" and ev["rul_hours"] == 20.0
    assert ev["health"] == 0.3333 and ev["anomaly_score"] == 0.5
    assert (ev["model_name"], ev["model_version"]) == ("rul_gbr", "3")
    assert ev["top_sensors"] == ["T24", "T50"]
    assert ev["episode_start_ts_ms"] == T0_MS
    alerts[0].to_json_dict()  # serialisable shape


def test_nan_values_neither_fire_nor_resolve() -> None:
    state = AlertState()
    assert evaluate(state, pred(health=math.nan, anomaly_score=math.nan), TH) == []
    evaluate(state, pred(60, health=0.6), TH)
    assert evaluate(state, pred(120, health=math.nan), TH) == []
    assert state.active() == {HEALTH_LOW: "warning"}


# --- ids, determinism, pickling ------------------------------------------------------------


def test_alert_id_follows_the_documented_formula() -> None:
    (a,) = evaluate(AlertState(), pred(30, health=0.3), TH)
    key = f"turbofan-0007|health_low|{T0_MS + 30_000}|firing|critical"
    assert a.alert_id == hashlib.sha256(key.encode()).hexdigest()[:16]


def test_replaying_the_same_predictions_yields_the_same_alerts() -> None:
    series: dict[str, Any] = {
        "health": [0.6, 0.3, 0.9, 0.5, 0.95],
        "rul_hours": [60.0, 20.0, 90.0, 90.0, 10.0],
    }
    first, second = run(AlertState(), **series), run(AlertState(), **series)
    assert first == second
    ids = [a.alert_id for batch in first for a in batch]
    assert len(ids) == len(set(ids)) >= 5


def test_ids_differ_per_equipment_and_episode() -> None:
    a = evaluate(AlertState(), pred(health=0.6), TH)[0]
    b = evaluate(AlertState(), pred(health=0.6, equipment_id="turbofan-0008"), TH)[0]
    c = evaluate(AlertState(), pred(60, health=0.6), TH)[0]
    assert len({a.alert_id, b.alert_id, c.alert_id}) == 3


def test_pickle_round_trip_continues_identically() -> None:
    state = AlertState()
    run(state, health=[0.6, 0.3], anomaly_score=[0.95, 0.95])
    clone = pickle.loads(pickle.dumps(state))
    assert clone == state and clone is not state
    assert len(pickle.dumps(state)) < 1024
    later = [pred(600, health=0.95, anomaly_score=0.95), pred(660, health=0.6)]
    assert [evaluate(state, p, TH) for p in later] == [evaluate(clone, p, TH) for p in later]


@pytest.mark.parametrize(
    "kw",
    [
        {"rul_warning_hours": 24.0, "rul_critical_hours": 24.0},
        {"health_warning": 0.3},
        {"anomaly_critical": 0.5},
        {"hysteresis": -0.1},
        {"hysteresis": 1.0},
        {"cooldown_s": -1.0},
        {"anomaly_min_consecutive": 0},
    ],
)
def test_inconsistent_thresholds_are_rejected(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Thresholds(**kw)


# --- property: any sequence gives a well-formed, replayable alert history -----------------

_health = st.one_of(st.sampled_from([0.1, 0.39, 0.4, 0.5, 0.7, 0.72, 0.77, 0.9]), st.floats(0, 1))
_anomaly = st.one_of(st.sampled_from([0.1, 0.81, 0.85, 0.91, 0.98, 0.99]), st.floats(0, 1))
_rul = st.one_of(st.none(), st.sampled_from([5.0, 24.0, 30.0, 72.0, 75.0, 80.0, 300.0]))
_step = st.tuples(
    st.sampled_from([1, 60, 600, 1800, 3600, 7200]),  # gap to the previous prediction, s
    _health,
    _anomaly,
    _rul,
    st.floats(0.5, 1.0),  # rul_lower as a fraction of rul
)
_thresholds = st.builds(
    Thresholds,
    hysteresis=st.sampled_from([0.0, 0.05, 0.1, 0.3]),
    cooldown_s=st.sampled_from([0.0, 600.0, 3600.0]),
    anomaly_min_consecutive=st.integers(1, 4),
    use_rul_lower_bound=st.booleans(),
)
_LOWER_IS_WORSE = {RUL_LOW: True, HEALTH_LOW: True, ANOMALY_HIGH: False}


def _below(value: float, threshold: float) -> bool:
    return value < threshold


def _above(value: float, threshold: float) -> bool:
    return value > threshold


def _predictions(
    steps: list[tuple[int, float, float, float | None, float]],
) -> list[Prediction]:
    out, t = [], 0.0
    for gap, health, anomaly, rul, lower_frac in steps:
        t += gap
        out.append(
            pred(
                t,
                health=health,
                anomaly_score=anomaly,
                rul=rul,
                rul_hours=rul,
                rul_lower=None if rul is None else rul * lower_frac,
            )
        )
    return out


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_step, max_size=60), th=_thresholds, cut=st.integers(0, 60))
def test_any_prediction_sequence_yields_a_well_formed_history(
    steps: list[tuple[int, float, float, float | None, float]], th: Thresholds, cut: int
) -> None:
    preds = _predictions(steps)
    state = AlertState()
    history: list[list[Alert]] = []
    open_sev: dict[str, str] = {}  # the consumer's view: rule -> announced severity
    last_resolved: dict[str, int] = {}
    ids: set[str] = set()
    for p in preds:
        alerts = evaluate(state, p, th)
        history.append(alerts)
        assert len({a.rule for a in alerts}) == len(alerts)  # one transition per rule
        for a in alerts:
            assert a.ts_ms == p.ts_ms and a.equipment_id == p.equipment_id
            assert a.alert_id not in ids
            ids.add(a.alert_id)
            worse = _below if _LOWER_IS_WORSE[a.rule] else _above
            if a.state == "firing":
                assert a.rule not in open_sev
                if a.severity == "warning" and a.rule in last_resolved:
                    assert p.ts_ms - last_resolved[a.rule] >= th.cooldown_s * 1000
                assert worse(a.value, a.threshold)
                open_sev[a.rule] = a.severity
            elif a.state == "escalated":
                assert open_sev.get(a.rule) == "warning" and a.severity == "critical"
                assert worse(a.value, a.threshold)
                open_sev[a.rule] = "critical"
            else:
                assert a.state == "resolved"
                assert open_sev.pop(a.rule) == a.severity
                # past the clear level (warning threshold moved by the hysteresis margin)
                assert not worse(a.value, a.threshold)
                last_resolved[a.rule] = p.ts_ms
        # every announced episode is still active in the state, at that severity
        for rule, sev in open_sev.items():
            assert state.rules[rule].severity == sev

    # replay from scratch: identical history (deterministic ids)
    replay_state = AlertState()
    assert [evaluate(replay_state, p, th) for p in preds] == history

    # snapshot anywhere: a pickled copy continues identically
    cut = min(cut, len(preds))
    partial = AlertState()
    for p in preds[:cut]:
        evaluate(partial, p, th)
    restored = pickle.loads(pickle.dumps(partial))
    assert [evaluate(restored, p, th) for p in preds[cut:]] == history[cut:]


# --- resolve dwell (flapping) --------------------------------------------------------------

DWELL = Thresholds(cooldown_s=0.0, resolve_dwell_s=3600.0)  # one hour clear to resolve


def hourly(state: AlertState, th: Thresholds, rul: list[float]) -> list[tuple[int, str, str]]:
    """RUL predictions every 20 minutes; (index, state, severity) of the rul_low alerts."""
    out = []
    for i, r in enumerate(rul):
        for a in evaluate(state, pred(1200.0 * i, rul=r, rul_hours=r), th):
            if a.rule == "rul_low":
                out.append((i, a.state, a.severity))
    return out


def test_a_wobbling_rul_keeps_one_episode_with_the_dwell() -> None:
    wobble = [100, 62, 81, 90, 69, 80, 85, 70, 100, 100, 100, 100, 100]
    assert hourly(AlertState(), DWELL, wobble) == [
        (1, "firing", "warning"),
        (11, "resolved", "warning"),
    ]
    no_dwell = Thresholds(cooldown_s=0.0, resolve_dwell_s=0.0)
    assert [s for _, s, _ in hourly(AlertState(), no_dwell, wobble)] == [
        "firing", "resolved", "firing", "resolved", "firing", "resolved",
    ]  # fmt: skip


def test_a_value_back_beyond_the_clear_level_restarts_the_dwell() -> None:
    # clear at 2, 3, 4 (40 min), not clear at 5, clear from 6: resolves at 6 + 3 (one hour)
    series = [100, 60, 90, 90, 90, 75, 90, 90, 90, 90, 90]
    assert hourly(AlertState(), DWELL, series)[-1] == (9, "resolved", "warning")


def test_the_dwell_never_delays_a_critical() -> None:
    series = [100, 60, 90, 20, 90, 90, 90, 90]  # critical while the dwell runs
    got = hourly(AlertState(), DWELL, series)
    assert got == [(1, "firing", "warning"), (3, "escalated", "critical"),
                   (7, "resolved", "critical")]  # fmt: skip
    assert hourly(AlertState(), DWELL, [100, 10]) == [(1, "firing", "critical")]


def test_anomaly_high_resolves_without_the_dwell() -> None:
    th = Thresholds(anomaly_warning=0.9, anomaly_critical=0.98, resolve_dwell_s=3600.0)
    st_ = AlertState()
    first = evaluate(st_, pred(0.0, anomaly_score=0.95), th)
    back = evaluate(st_, pred(60.0, anomaly_score=0.1), th)
    assert brief(first) == [("anomaly_high", "firing", "warning")]
    assert brief(back) == [("anomaly_high", "resolved", "warning")]


def test_negative_dwell_is_refused() -> None:
    with pytest.raises(ValueError, match="resolve_dwell_s"):
        Thresholds(resolve_dwell_s=-1.0)
