"""The in-stream check end to end on a tiny generated C-MAPSS file (three operating
conditions, so the flow's condition normaliser is exercised), and its file helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from connectors.cmapss import CmapssUnit, read_cmapss
from models.evaluate_cmapss import MIN_STEPS, evaluate, format_cmapss, main, truncate
from models.train import TrainParams
from tests.test_conditions import multi_condition_units


def cmapss_units(n_units: int, seed: int) -> list[CmapssUnit]:
    return [
        CmapssUnit(i + 1, np.arange(1, len(rul) + 1), settings, sensors)
        for i, (_uid, settings, sensors, rul) in enumerate(multi_condition_units(n_units, seed))
    ]


def test_written_files_read_back_exactly(tmp_path) -> None:
    units = cmapss_units(3, seed=1)
    path = tmp_path / "train.txt"
    path.write_text(format_cmapss(units))
    back = read_cmapss(path)
    assert [u.unit for u in back] == [1, 2, 3]
    for a, b in zip(units, back, strict=True):
        np.testing.assert_array_equal(a.cycles, b.cycles)
        np.testing.assert_array_equal(a.settings, b.settings)
        np.testing.assert_array_equal(a.sensors, b.sensors)


def test_truncation_keeps_a_prefix_and_knows_the_true_rul() -> None:
    units = cmapss_units(5, seed=2)
    held = truncate(units[::-1], np.random.default_rng(0))
    assert [t.number for t in held] == [1, 2, 3, 4, 5]
    assert [t.source_unit for t in held] == [5, 4, 3, 2, 1]
    for t, u in zip(held, units[::-1], strict=True):
        n = len(t.unit.cycles)
        assert min(MIN_STEPS, len(u.cycles)) <= n <= len(u.cycles)
        np.testing.assert_array_equal(t.unit.sensors, u.sensors[:n])
        assert t.true_rul == len(u.cycles) - n


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("cmapss") / "train_tiny.txt"
    path.write_text(format_cmapss(cmapss_units(8, seed=4)))
    return path


def test_replaying_held_out_units_through_the_flow_matches_offline(train_file, tmp_path) -> None:
    params = TrainParams(folds=0, max_iter=15, quantile_max_iter=10, seed=5)
    report = evaluate(train_file, folds=2, seed=5, workdir=tmp_path, params=params)

    assert report["units"] == 8
    rows = sum(
        len(u.cycles) for k in (1, 2) for u in read_cmapss(tmp_path / f"fold{k}" / "test.txt")
    )
    assert report["rows_replayed"] == rows > 8 * MIN_STEPS - 1
    assert report["rows_per_s"] > 0
    # every held-out unit got a prediction from the flow, equal to the offline one
    assert report["max_abs_stream_vs_offline"] == 0.0
    assert np.isfinite(report["rmse"]) and report["rmse"] < 125
    assert report["nasa_per_unit"] == pytest.approx(report["nasa_score"] / 8)
    assert 0.0 <= report["band_coverage"] <= 1.0
    # the flow really normalised by condition: the fold models carry three conditions
    from connectors.model_store import load_path

    meta = load_path(tmp_path / "fold1" / "model").for_type("turbofan_engine").meta
    assert meta.conditions is not None and meta.conditions.n_conditions == 3
    assert meta.operating_history
    outputs = (tmp_path / "fold1" / "out.jsonl").read_text().splitlines()
    assert len(outputs) == report["per_fold"][0]["rows"]  # one prediction per reading
    assert {json.loads(line)["model"]["name"] for line in outputs} == {meta.model_name}


def test_command_line_writes_a_report(train_file, tmp_path, capsys) -> None:
    out = tmp_path / "report.json"
    args = ["--train", str(train_file), "--folds", "2", "--seed", "1", "--max-iter", "10",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "in-stream 2-fold check" in printed and "rows/s" in printed
    report = json.loads(out.read_text())
    assert report["units"] == 8 and report["max_abs_stream_vs_offline"] == 0.0
    with pytest.raises(ValueError, match="folds"):
        evaluate(train_file, folds=1)
