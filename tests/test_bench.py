"""Smoke tests of the benchmark runner (``tests.bench``): arguments and the table. No
timings are asserted; speed is judged by ``make bench``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import bench


def test_only_accepts_names_and_commas() -> None:
    assert bench.parse_args(["--only", "parse,onnx", "--only", "flow"]).only == [
        "parse",
        "onnx",
        "flow",
    ]
    assert bench.parse_args([]).only == list(bench.NAMES)


def test_unknown_name_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "parse,nope"])
    assert "nope" in capsys.readouterr().err


def test_quick_parse_prints_one_table_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(["--quick", "--only", "parse", "--model", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| parse |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[2] == f"{bench.QUICK.parse:,}"
    assert float(cells[4].replace(",", "")) > 0  # items/s


def test_missing_model_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--only", "onnx", "--model", str(tmp_path / "absent")]) == 2
    assert "no model" in capsys.readouterr().err
