"""The flow's detector and alert rule on a NAB-format directory, scored by NAB's rules.

Every ``data/<category>/*.csv`` (columns ``timestamp,value``) goes through
:func:`models.score_csv.score_and_alert`, the code path of ``python -m models.score_csv``:
the flow's detector, then the flow's ``anomaly_high`` rule on event time. Two score files
per data file are written (columns ``timestamp,anomaly_score``):

* ``pages/``: 1.0 on a page (a ``firing``), else 0.0, scored at threshold 0.5: what an
  operator would have been told;
* ``raw/``: the score the rule judged (the detector's, or its likelihood), scored at the
  threshold NAB's optimiser picks per profile over these files (the best any fixed
  threshold on that signal could do).

Both are scored with :mod:`models.nab_scoring` (standard, low-FP and low-FN profiles).
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alerting.rules import FIRING, Thresholds
from models import nab_scoring
from models.score_csv import resolve_columns, score_and_alert

PAGES = "pages"
RAW = "raw"
PAGE_THRESHOLD = 0.5


@dataclass(frozen=True)
class NabScore:
    """Normalised NAB scores (0 = never alarms, 100 = perfect) of one signal on a set."""

    signal: str
    scores: dict[str, float]  # profile -> normalised score
    thresholds: dict[str, float]  # profile -> threshold used


@dataclass(frozen=True)
class NabReport:
    files: int
    rows: int
    windows: int
    pages: int
    seconds: float  # detector + rule over every row (reading and writing included)
    results: tuple[NabScore, ...]

    @property
    def us_per_row(self) -> float:
        return self.seconds / self.rows * 1e6 if self.rows else float("nan")


def data_files(data_dir: Path) -> list[str]:
    """NAB keys (``category/name.csv``) of every data file, sorted."""
    root = data_dir / "data"
    if not (data_dir / "labels" / "combined_windows.json").is_file() or not root.is_dir():
        raise ValueError(f"{data_dir} is not a NAB directory (data/, labels/combined_windows.json)")
    keys = sorted(
        f"{cat.name}/{f.name}"
        for cat in root.iterdir()
        if cat.is_dir()
        for f in cat.iterdir()
        if f.suffix == ".csv"
    )
    if not keys:
        raise ValueError(f"no data/<category>/*.csv under {data_dir}")
    return keys


def score_data_file(
    source: Path, pages_out: Path, raw_out: Path, thresholds: Thresholds, likelihood: bool = False
) -> tuple[int, int]:
    """Score one NAB data file into its page and raw score files; (rows, pages)."""
    with source.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{source}: empty file")
        columns = resolve_columns(header, "timestamp", None, ["value"])
        rows = pages = 0
        pages_out.parent.mkdir(parents=True, exist_ok=True)
        raw_out.parent.mkdir(parents=True, exist_ok=True)
        with pages_out.open("w", newline="") as pf, raw_out.open("w", newline="") as rf:
            pw, rw = csv.writer(pf, lineterminator="\n"), csv.writer(rf, lineterminator="\n")
            pw.writerow(["timestamp", "anomaly_score"])
            rw.writerow(["timestamp", "anomaly_score"])
            for r in score_and_alert(reader, columns, thresholds, likelihood=likelihood):
                page = r.alert.startswith(FIRING)
                pages += page
                rows += 1
                pw.writerow([r.timestamp, "1.0" if page else "0.0"])
                rw.writerow([r.timestamp, f"{r.signal:.9g}"])
    return rows, pages


def score_signal(
    data_dir: Path, score_dir: Path, keys: Sequence[str], signal: str
) -> tuple[NabScore, int]:
    """NAB-score one signal's files (pages at 0.5, raw at the optimised threshold)."""
    windows_json = nab_scoring.load_json(
        os.path.join(data_dir, "labels", "combined_windows.json"), "labels"
    )
    weights = nab_scoring.load_weights(str(data_dir))
    files = [
        nab_scoring.load_file(k, str(score_dir / k), str(data_dir), windows_json) for k in keys
    ]
    n_windows = sum(len(f.windows) for f in files)
    scores, used = {}, {}
    for profile in nab_scoring.PROFILES:
        w = weights[profile]
        if signal == PAGES:
            threshold = PAGE_THRESHOLD
        else:
            threshold, _ = nab_scoring.optimize_threshold(files, w)
        total = sum(f.score_at(threshold, w)["score"] for f in files)
        perfect, null = w["tp"] * n_windows, -w["fn"] * n_windows
        short = nab_scoring.SHORT[profile]
        scores[short] = 100.0 * (total - null) / (perfect - null) if perfect > null else 0.0
        used[short] = threshold
    return NabScore(signal, scores, used), n_windows


def run_nab(
    data_dir: Path, out_dir: Path, thresholds: Thresholds | None = None, likelihood: bool = False
) -> NabReport:
    """Score every file of ``data_dir`` into ``out_dir/{pages,raw}/`` and NAB-score both
    (with ``likelihood``, the rule and the raw files see the score's likelihood)."""
    th = thresholds if thresholds is not None else Thresholds()
    keys = data_files(data_dir)
    rows = pages = 0
    began = time.perf_counter()
    for key in keys:
        n, p = score_data_file(
            data_dir / "data" / key, out_dir / PAGES / key, out_dir / RAW / key, th, likelihood
        )
        rows += n
        pages += p
    seconds = time.perf_counter() - began
    results = []
    n_windows = 0
    for signal in (PAGES, RAW):
        result, n_windows = score_signal(data_dir, out_dir / signal, keys, signal)
        results.append(result)
    return NabReport(len(keys), rows, n_windows, pages, seconds, tuple(results))


def windows_of(data_dir: Path) -> dict[str, list[list[str]]]:
    """The label file (for tests and reports)."""
    with (data_dir / "labels" / "combined_windows.json").open() as f:
        out: dict[str, list[list[str]]] = json.load(f)
    return out
