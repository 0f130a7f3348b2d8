"""``python -m models.score_csv``: any CSV time series in, one calibrated score per row out."""

from __future__ import annotations

import csv
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from alerting.rules import ANOMALY_HIGH, AlertState, Thresholds, evaluate
from models.anomaly import AnomalyDetector
from models.schemas import Prediction, iso_to_ms
from models.score_csv import main

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2026, 3, 1)
SPIKE_ROW = 1_500  # 1-based data row with the injected spike


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def minute(i: int) -> str:
    """ISO 8601 time of row ``i`` of a one-row-a-minute series (naive, i.e. UTC)."""
    return (START + timedelta(minutes=i)).isoformat()


def read_scores(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def univariate(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    values = 20.0 + 0.5 * rng.normal(size=2_000)
    values[SPIKE_ROW - 1] += 4.0  # 8 sigma
    rows = [[minute(i) + "Z", f"{v:.4f}"] for i, v in enumerate(values)]
    return write_csv(tmp_path / "series.csv", ["time", "temperature"], rows)


def test_univariate_series_with_a_spike(univariate: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    assert (
        main(["--input", str(univariate), "--timestamp-column", "time", "--output", str(out)]) == 0
    )
    got = read_scores(out)
    with univariate.open() as f:
        times = [r["time"] for r in csv.DictReader(f)]
    assert [r["row"] for r in got] == [str(i) for i in range(1, 2_001)]  # one per row, in order
    assert [r["time"] for r in got] == times
    scores = np.array([float(r["score"]) for r in got])
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    assert np.all(scores[:60] == 0.0)  # warm-up
    assert scores[SPIKE_ROW - 1] >= 0.99
    ordinary = np.delete(scores[200:], SPIKE_ROW - 1 - 200)
    assert np.mean(ordinary < 0.9) > 0.85


def test_scores_are_the_flows_detector(tmp_path: Path) -> None:
    """Several value columns, with gaps: the same scores as the detector fed dicts."""
    rng = np.random.default_rng(1)
    data = rng.normal(size=(400, 3)) * [1.0, 10.0, 0.1] + [5.0, 100.0, -1.0]
    cells = [[f"{v:.5f}" for v in row] for row in data]
    for i in range(0, 400, 7):
        cells[i][i % 3] = ""  # a missing value
    src = write_csv(tmp_path / "m.csv", ["a", "b", "c"], cells)
    out = tmp_path / "s.csv"
    assert main(["--input", str(src), "--output", str(out)]) == 0
    det = AnomalyDetector()
    expected = [
        det.score_learn({k: float(v) for k, v in zip("abc", row, strict=True) if v})
        for row in cells
    ]
    assert [float(r["score"]) for r in read_scores(out)] == pytest.approx(expected, abs=1e-8)


def test_value_columns_and_one_detector_per_id(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    rows = []
    for i in range(300):  # two machines interleaved; "noise" is not to be scored
        for eq, level in (("p1", 1.0), ("p2", 1000.0)):
            rows.append([i, eq, f"{level + rng.normal():.4f}", f"{rng.normal():.4f}"])
    src = write_csv(tmp_path / "fleet.csv", ["t", "equipment", "x", "noise"], rows)
    out = tmp_path / "s.csv"
    argv = ["--input", str(src), "--output", str(out), "--timestamp-column", "t"]
    assert main([*argv, "--id-column", "equipment", "--value-columns", "x"]) == 0
    got = read_scores(out)
    assert list(got[0]) == ["row", "t", "equipment", "score", "alert"]
    alone = {}
    for eq in ("p1", "p2"):  # each id scored as if it had its own file
        det = AnomalyDetector()
        alone[eq] = [det.score_learn({"x": float(r[2])}) for r in rows if r[1] == eq]
    for eq in ("p1", "p2"):
        mine = [float(r["score"]) for r in got if r["equipment"] == eq]
        assert mine == pytest.approx(alone[eq], abs=1e-8)
        assert mine[:60] == [0.0] * 60  # each id has its own warm-up
    # comma-separated names work too
    assert main([*argv, "--value-columns", "x,noise", "--warmup", "10"]) == 0
    assert sum(float(r["score"]) > 0 for r in read_scores(out)[:10]) == 0


@pytest.mark.parametrize(
    ("content", "argv", "message"),
    [
        ("time,value\n1,2\n", ["--value-columns", "temp"], "no column 'temp'"),
        ("time,value\n1,2\n2,abc\n", [], "line 3, column 'value': 'abc' is not a number"),
        ("time,value\n1,2\n2\n", ["--timestamp-column", "time"], "line 3: 1 fields"),
        ("", [], "empty"),
        ("time,value\n1,inf\n", [], "not finite"),
        ("time\n1\n", ["--timestamp-column", "time"], "no value columns"),
        ("a,a\n1,2\n", [], "duplicate column"),
        ("t,v\n2026-01-01T00:00:00Z,1\nsoon,2\n", ["--timestamp-column", "t"], "not a timestamp"),
    ],
)
def test_bad_input_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, argv: list[str], message: str
) -> None:
    src = tmp_path / "bad.csv"
    src.write_text(content)
    out = tmp_path / "out.csv"
    assert main(["--input", str(src), "--output", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err
    assert not out.exists() and list(tmp_path.iterdir()) == [src]  # nothing half-written


def test_missing_files_and_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.csv"
    assert main(["--input", str(tmp_path / "absent.csv"), "--output", str(out)]) == 2
    assert "absent.csv" in capsys.readouterr().err
    src = write_csv(tmp_path / "ok.csv", ["v"], [[1.0]])
    assert main(["--input", str(src), "--output", str(tmp_path / "no" / "dir.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--input", str(src), "--output", str(out), "--warmup", "1"])
    assert exc.value.code == 2


def test_command_line_errors_without_a_traceback(tmp_path: Path) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("time,value\n1,2\n2,oops\n")
    cmd = [sys.executable, "-m", "models.score_csv", "--input", str(src)]
    done = subprocess.run(
        [*cmd, "--output", str(tmp_path / "o.csv")], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "'oops' is not a number" in done.stderr


# --- what would page ------------------------------------------------------------------------


def bursty_series(path: Path) -> Path:
    """One row a minute of noise with three 8-sigma bursts: 2 h apart, then 10 h later."""
    rng = np.random.default_rng(5)
    values = 10.0 + rng.normal(size=1_500)
    for start in (600, 720, 1_320):
        values[start : start + 3] += 8.0
    return write_csv(path, ["ts", "v"], [[minute(i), f"{v:.4f}"] for i, v in enumerate(values)])


def flow_alerts(scores: list[float], times_ms: list[int], th: Thresholds) -> list[str]:
    """The flow's anomaly_high transitions, from alerting.rules fed predictions directly."""
    state, out = AlertState(), []
    for ts, score in zip(times_ms, scores, strict=True):
        p = Prediction("e", "pump", ts, None, "hours", None, None, None, 1.0, score, "ok", "m", "1")
        found = [a for a in evaluate(state, p, th) if a.rule == ANOMALY_HIGH]
        out.append("; ".join(f"{a.state} {a.severity}" for a in found))
    return out


def open_episode(rows: list[dict[str, str]], row: int) -> bool:
    """Whether an announced episode is open at 1-based ``row`` (by the alert column)."""
    last = [r["alert"] for r in rows[:row] if r["alert"]]
    return bool(last) and not last[-1].startswith("resolved")


def test_alert_column_is_the_flows_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = bursty_series(tmp_path / "b.csv")
    out = tmp_path / "s.csv"
    argv = ["--input", str(src), "--output", str(out), "--timestamp-column", "ts"]
    assert main(argv) == 0
    got = read_scores(out)
    scores = [float(r["score"]) for r in got]
    times = [iso_to_ms(r["ts"]) for r in got]
    assert [r["alert"] for r in got] == flow_alerts(scores, times, Thresholds())
    fired = [i + 1 for i, r in enumerate(got) if r["alert"].startswith("firing")]
    for burst in (601, 721, 1_321):  # each burst is inside an announced episode
        assert open_episode(got, burst), burst
    assert {r["alert"].split()[0] for r in got if r["alert"]} <= {"firing", "escalated", "resolved"}
    summary = capsys.readouterr().out
    assert f"would have paged {len(fired)} time" in summary
    assert f"row {fired[0]} at 2026-03-01T" in summary


def test_cooldown_and_threshold_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A warning-only rule, with and without a 6 h cooldown: exactly the flow rule's
    transitions each time, and the cooldown holds some page back."""
    src = bursty_series(tmp_path / "b.csv")
    out = tmp_path / "s.csv"
    base = ["--input", str(src), "--output", str(out), "--timestamp-column", "ts"]
    warn_only = ["--anomaly-critical", "1.0"]  # scores never exceed 1: no critical

    def onsets(extra: list[str]) -> list[int]:
        assert main([*base, *warn_only, *extra]) == 0
        rows = read_scores(out)
        scores = [float(r["score"]) for r in rows]
        th = Thresholds(anomaly_critical=1.0, cooldown_s=float(extra[-1]))
        assert [r["alert"] for r in rows] == flow_alerts(
            scores, [iso_to_ms(r["ts"]) for r in rows], th
        )
        return [i for i, r in enumerate(rows) if r["alert"].startswith("firing")]

    free = onsets(["--cooldown-s", "0"])
    held = onsets(["--cooldown-s", "21600"])
    assert free and held and len(held) < len(free)
    capsys.readouterr()


def test_without_timestamps_rows_are_period_apart(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    values = 1.0 + 0.1 * rng.normal(size=400)
    values[[200, 260]] += 2.0  # two spikes 60 rows apart
    src = write_csv(tmp_path / "v.csv", ["v"], [[f"{v:.5f}"] for v in values])
    out = tmp_path / "s.csv"
    warn = ["--anomaly-critical", "1.0"]
    alerts = []
    for period in (60, 600):  # 1 h or 10 h between the spikes
        argv = ["--input", str(src), "--output", str(out), *warn, "--period-s", str(period)]
        assert main(argv) == 0
        rows = read_scores(out)
        scores = [float(r["score"]) for r in rows]
        times = [i * period * 1000 for i in range(len(rows))]
        alerts.append([r["alert"] for r in rows])
        assert alerts[-1] == flow_alerts(scores, times, Thresholds(anomaly_critical=1.0))
    assert alerts[0] != alerts[1]  # the rule's timing follows the period
    assert alerts[1][200].startswith("firing")


def test_bad_rule_options_are_usage_errors(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "ok.csv", ["v"], [[1.0]])
    argv = ["--input", str(src), "--output", str(tmp_path / "o.csv")]
    for bad in (["--anomaly-warning", "0.99", "--anomaly-critical", "0.9"], ["--period-s", "0"]):
        with pytest.raises(SystemExit) as exc:
            main([*argv, *bad])
        assert exc.value.code == 2


def test_likelihood_option_feeds_the_rule(tmp_path: Path) -> None:
    """--likelihood: a likelihood column from models.likelihood over the scores, and the
    rule judges it instead of the score; a lone spike moves it less than a run of them."""
    from models.likelihood import ScoreLikelihood

    rng = np.random.default_rng(8)
    values = 10.0 + rng.normal(size=1_500)
    values[700] += 8.0  # one reading
    values[1_200:1_215] += 8.0  # a run
    src = write_csv(
        tmp_path / "v.csv", ["ts", "v"], [[minute(i), f"{v:.4f}"] for i, v in enumerate(values)]
    )
    out = tmp_path / "s.csv"
    assert (
        main(
            ["--input", str(src), "--output", str(out), "--timestamp-column", "ts", "--likelihood"]
        )
        == 0
    )
    rows = read_scores(out)
    assert list(rows[0]) == ["row", "ts", "score", "likelihood", "alert"]
    lk = ScoreLikelihood()
    expected = [lk.update(float(r["score"])) for r in rows]
    got = [float(r["likelihood"]) for r in rows]
    assert got == pytest.approx(expected, abs=1e-5)  # scores are written to 9 digits
    times = [iso_to_ms(r["ts"]) for r in rows]
    assert [r["alert"] for r in rows] == flow_alerts(got, times, Thresholds())
    assert max(got[1_200:1_216]) > 0.9999 and max(got[1_200:1_216]) >= max(got[700:711])
