"""The flow reproduces its golden outputs (tests/golden/, recorded before the columnar
engine rebuild): for a simulated fleet with faults and for a C-MAPSS-format replay, the
same predictions (RUL within 1e-3), the same alert episodes (equipment, rule, severity,
state; firing within one reading) and the same dead letters."""

from __future__ import annotations

from collections import defaultdict

import pytest

from tests.golden.record import as_row, load, run_case

RUL_TOL = 1e-3
SCORE_TOL = 1e-6


@pytest.mark.parametrize("case", ["sim", "cmapss"])
def test_the_flow_reproduces_the_golden_outputs(case):
    golden = load(case)
    now = [as_row(x) for x in run_case(case)]

    def by_kind(rows, kind):
        return [r for r in rows if r["kind"] == kind]

    gp = {(r["equipment_id"], r["ts_ms"]): r for r in by_kind(golden, "prediction")}
    np_ = {(r["equipment_id"], r["ts_ms"]): r for r in by_kind(now, "prediction")}
    assert set(np_) == set(gp), "predictions for the same readings"
    worst = 0.0
    for key, g in gp.items():
        n = np_[key]
        for field in ("rul", "rul_lower", "rul_upper"):
            if g[field] is None or n[field] is None:
                assert g[field] == n[field], (key, field)
            else:
                worst = max(worst, abs(g[field] - n[field]))
        assert abs(g["health"] - n["health"]) <= RUL_TOL, key
        assert abs(g["anomaly_score"] - n["anomaly_score"]) <= SCORE_TOL, key
        assert g["status"] == n["status"], key
    assert worst <= RUL_TOL, f"RUL differs by up to {worst:g}"

    # alert episodes: the same (equipment, rule, severity, state) transitions, each at the
    # golden reading or the next one of that machine
    steps: dict[str, list[int]] = defaultdict(list)
    for eq, ts in sorted(gp):
        steps[eq].append(ts)

    def episodes(rows):
        out = defaultdict(list)
        for r in by_kind(rows, "alert"):
            out[(r["equipment_id"], r["rule"], r["severity"], r["state"])].append(r["ts_ms"])
        return {k: sorted(v) for k, v in out.items()}

    g_ep, n_ep = episodes(golden), episodes(now)
    assert set(n_ep) == set(g_ep)
    for key, g_ts in g_ep.items():
        n_ts = n_ep[key]
        assert len(n_ts) == len(g_ts), key
        for a, b in zip(g_ts, n_ts, strict=True):
            seq = steps.get(key[0], [])
            apart = abs(seq.index(a) - seq.index(b)) if a in seq and b in seq else abs(a - b)
            assert apart <= 1, (key, a, b)

    g_dead = sorted((r["reason"], r["equipment_id"] or "") for r in by_kind(golden, "dead"))
    n_dead = sorted((r["reason"], r["equipment_id"] or "") for r in by_kind(now, "dead"))
    assert n_dead == g_dead
    assert len(gp) > 1000 and g_ep  # the case exercises the flow
