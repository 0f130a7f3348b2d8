"""The in-stream check: is the RUL model as good in the running flow as in validation?

    python -m models.evaluate_cmapss --train /path/train_FD001.txt [--folds 5] [--seed S]

For each unit-wise fold: train a model on the other units (exactly as ``models.train``
does; with ``--inner-folds N`` its band is calibrated by CV on those units, else it ships
the raw quantile band), write the held-out units truncated at random cycles as a
C-MAPSS file (like the official test files, units renumbered 1..m), replay that file
through the real flow (``flows.pipeline.build_flow`` with ``source=cmapss:FILE``,
``output=jsonl:OUT`` and that fold's bundle, run by ``bytewax.testing.run_main``), take each
unit's last prediction and score it against the true RUL (capped at the model's cap).

Reported: RMSE, NASA score (sum over units, one truncation each, and per unit), band
coverage, rows replayed and replay wall time, the per-prediction inference cost (features
and ONNX, see :func:`inference_cost`), and the largest difference between the
stream's last predictions and the same model applied offline to
:func:`models.features.history_features` of the same histories, rounded to 1e-3 as the
JSONL output is (0.0: the stream computes exactly what training computed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from connectors.cmapss import CmapssUnit, equipment_id_for, read_cmapss
from models.dataset import nasa_score, rmse, unit_folds
from models.train import (
    FeatureOptions,
    TrainParams,
    UnitHistory,
    progress,
    train_type,
)

EQUIPMENT_TYPE = "turbofan_engine"
MIN_STEPS = 31  # as in models.dataset.truncation_rows


@dataclass(frozen=True)
class Truncated:
    """A held-out unit cut at a random cycle, and its true RUL there."""

    number: int  # unit number in the written test file (1..m)
    source_unit: int  # unit number in the training file
    unit: CmapssUnit  # the history up to the cut
    true_rul: float  # uncapped


def truncate(units: Sequence[CmapssUnit], rng: np.random.Generator) -> list[Truncated]:
    """Cut each unit after a random number of cycles (at least ``MIN_STEPS`` when it has
    them), renumbering the units 1..m in order.

    >>> u = CmapssUnit(7, np.arange(1, 41), np.zeros((40, 3)), np.zeros((40, 21)))
    >>> t = truncate([u], np.random.default_rng(0))[0]
    >>> t.number, t.source_unit, len(t.unit.cycles) + t.true_rul == 40
    (1, 7, True)
    """
    out = []
    for i, u in enumerate(units):
        n = len(u.cycles)
        keep = int(rng.integers(min(MIN_STEPS, n), n + 1))
        cut = CmapssUnit(i + 1, u.cycles[:keep], u.settings[:keep], u.sensors[:keep])
        out.append(Truncated(i + 1, u.unit, cut, float(u.rul_to_failure[keep - 1])))
    return out


def format_cmapss(units: Sequence[CmapssUnit]) -> str:
    """Units as C-MAPSS text: unit, cycle, 3 settings, 21 sensors per row (floats written
    with ``repr``, so they read back exactly).

    >>> u = CmapssUnit(3, np.array([1]), np.array([[0.5, 0.0, 100.0]]), np.full((1, 21), 1.25))
    >>> format_cmapss([u]).split()[:7]
    ['3', '1', '0.5', '0.0', '100.0', '1.25', '1.25']
    """
    lines = []
    for u in units:
        for c, s, x in zip(u.cycles.tolist(), u.settings.tolist(), u.sensors.tolist(), strict=True):
            lines.append(" ".join([str(u.unit), str(int(c)), *map(repr, s), *map(repr, x)]))
    return "\n".join(lines) + "\n"


def replay(test_file: Path, bundle: Path, out: Path, config) -> tuple[dict[str, dict], float]:
    """Run the real flow over ``test_file``; each equipment's last prediction (as written
    to the JSONL output) and the flow's wall time in seconds."""
    from bytewax.testing import run_main

    from connectors.settings import load_settings
    from flows.pipeline import build_flow

    settings = load_settings(
        source=f"cmapss:{test_file}",
        output=f"jsonl:{out}",
        model=str(bundle),
        features={
            "windows": config.windows,
            "fft_enabled": bool(config.fft_sensors),
            "fft_bands": config.fft_bands,
        },
        predict_every=1,
    )
    flow = build_flow(settings)
    start = time.perf_counter()
    run_main(flow)
    wall = time.perf_counter() - start
    last: dict[str, dict] = {}
    with out.open() as fh:
        for line in fh:
            p = json.loads(line)
            seen = last.get(p["equipment_id"])
            if seen is None or p["ts"] >= seen["ts"]:
                last[p["equipment_id"]] = p
    return last, wall


def offline_last(model, held: Sequence[Truncated]) -> np.ndarray:
    """The same model on the same histories, offline: features at each unit's last cycle."""
    from models.equipment import CMAPSS_SENSORS
    from models.features import history_features

    cfg = model.meta.feature_config
    idx = [CMAPSS_SENSORS.index(s) for s in cfg.sensors]
    x = np.stack(
        [history_features(t.unit.sensors[:, idx], cfg, settings=t.unit.settings)[-1] for t in held]
    )
    return model.predict(x)[0]


def inference_cost(model, unit: CmapssUnit, batch: int = 256, repeat: int = 5) -> dict:
    """Per-prediction cost in microseconds of what the stream does for each reading:
    ``features_us`` (the reading enters an :class:`EquipmentState`'s window, normalised
    by condition, and its feature vector is computed; the anomaly detector is not counted),
    ``onnx_single_us`` (one ``RulModel.predict`` call per reading) and ``onnx_batched_us``
    (per row of a ``batch``-row call, as the flow's batched predict step does). Best of
    ``repeat`` passes over the unit's history (a shared machine is noisy)."""
    from models.anomaly import AnomalyDetector
    from models.equipment import CMAPSS_SENSORS, CMAPSS_SETTINGS
    from models.equipment_state import EquipmentState
    from models.schemas import Reading

    cfg = model.meta.feature_config
    readings = [
        Reading(
            "bench",
            EQUIPMENT_TYPE,
            1000 * (t + 1),
            dict(zip(CMAPSS_SENSORS, x, strict=True)),
            dict(zip(CMAPSS_SETTINGS, s, strict=True)),
        )
        for t, (s, x) in enumerate(zip(unit.settings.tolist(), unit.sensors.tolist(), strict=True))
    ]
    best_features = float("inf")
    feats: list[np.ndarray] = []
    for _ in range(repeat):
        state = EquipmentState(cfg, AnomalyDetector(), lateness_ms=0)
        start = time.perf_counter()
        feats = []
        for r in readings:
            state.buffer.append(state.window_row(r))
            feats.append(state.features())
        best_features = min(best_features, (time.perf_counter() - start) / len(readings))
    x = np.stack(feats)
    best_single = best_batched = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for row in x:
            model.predict(row[None])
        best_single = min(best_single, (time.perf_counter() - start) / len(x))
        big = np.resize(x, (batch, x.shape[1]))
        start = time.perf_counter()
        for _ in range(4):
            model.predict(big)
        best_batched = min(best_batched, (time.perf_counter() - start) / (4 * batch))
    return {
        "features_us": best_features * 1e6,
        "onnx_single_us": best_single * 1e6,
        "onnx_batched_us": best_batched * 1e6,
        "per_prediction_single_us": (best_features + best_single) * 1e6,
        "per_prediction_batched_us": (best_features + best_batched) * 1e6,
        "batch": batch,
    }


def evaluate(
    train_file: str | Path,
    folds: int = 5,
    seed: int = 1000,
    workdir: str | Path | None = None,
    params: TrainParams | None = None,
    options: FeatureOptions | None = None,
    measure_cost: bool = True,
) -> dict:
    """Train per fold, replay the truncated held-out units through the flow, score them."""
    from connectors.model_store import load_path, save_bundle

    t0 = time.perf_counter()
    units = read_cmapss(train_file)
    if folds < 2 or folds > len(units):
        raise ValueError(f"folds must be in 2..{len(units)} units, got {folds}")
    p = params or TrainParams(folds=0, seed=seed % 2**31)  # folds: inner CV per fold
    opts = options or FeatureOptions(fft=False, operating_history=True)
    rng = np.random.default_rng(seed % 2**31 + 1)
    total_rows = sum(len(u.cycles) for u in units)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="pm-eval-")
        workdir = tmp.name
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows, wall = 0, 0.0
    pred, low, high, true, gap = [], [], [], [], 0.0
    per_fold = []
    try:
        for k, test_idx in enumerate(unit_folds(len(units), folds, seed % 2**31)):
            held_set = set(test_idx.tolist())
            train = [
                UnitHistory(f"{train_file}#{u.unit}", u.sensors, u.rul_to_failure, u.settings)
                for i, u in enumerate(units)
                if i not in held_set
            ]
            stride = p.stride if p.stride > 1 else max(1, total_rows // 20_000)  # as train
            fold_p = TrainParams(**{**p.__dict__, "stride": stride})  # p.folds: inner CV
            blob, _ = train_type(EQUIPMENT_TYPE, train, opts, fold_p, t0)
            bundle = work / f"fold{k + 1}" / "model"
            save_bundle({EQUIPMENT_TYPE: blob}, bundle)
            held = truncate([units[i] for i in test_idx], rng)
            test_file = work / f"fold{k + 1}" / "test.txt"
            test_file.write_text(format_cmapss([t.unit for t in held]))
            model = load_path(bundle).for_type(EQUIPMENT_TYPE)
            assert model is not None
            last, seconds = replay(
                test_file, bundle, work / f"fold{k + 1}" / "out.jsonl", model.meta
            )
            fold_rows = sum(len(t.unit.cycles) for t in held)
            rows, wall = rows + fold_rows, wall + seconds
            cap = model.meta.rul_cap
            got = [last[equipment_id_for(t.number)] for t in held]
            fp = np.array([g["rul"] for g in got])
            ft = np.minimum([t.true_rul for t in held], cap)
            offline = [round(float(v), 3) for v in offline_last(model, held)]  # as in JSONL
            gap = max(gap, float(np.max(np.abs(fp - offline))))
            pred.append(fp)
            true.append(ft)
            low.append(np.array([g["rul_lower"] for g in got]))
            high.append(np.array([g["rul_upper"] for g in got]))
            per_fold.append({"fold": k + 1, "units": len(held), "rows": fold_rows,
                             "rmse": rmse(fp, ft), "replay_s": seconds})  # fmt: skip
            progress(
                f"fold {k + 1}/{folds}: {len(held)} units, {fold_rows} rows replayed in "
                f"{seconds:.1f}s, RMSE {rmse(fp, ft):.2f}",
                t0,
            )
        cost = inference_cost(model, units[int(test_idx[0])]) if measure_cost else {}
    finally:
        if tmp is not None:
            tmp.cleanup()
    pr, tr, lo, hi = map(np.concatenate, (pred, true, low, high))
    return {
        "train_file": str(train_file),
        "folds": folds,
        "seed": seed,
        "units": len(tr),
        "rmse": rmse(pr, tr),
        "nasa_score": nasa_score(pr, tr),
        "nasa_per_unit": nasa_score(pr, tr) / len(tr),
        "band_coverage": float(np.mean((tr >= lo) & (tr <= hi))),
        "band_width": float(np.mean(hi - lo)),
        "rows_replayed": rows,
        "replay_wall_s": wall,
        "rows_per_s": rows / wall if wall > 0 else float("nan"),
        "max_abs_stream_vs_offline": gap,
        "per_fold": per_fold,
        "inference_cost": cost,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.evaluate_cmapss", description=__doc__)
    ap.add_argument("--train", required=True, help="C-MAPSS training file")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--workdir", default=None, help="keep models, test files, outputs here")
    ap.add_argument("--max-iter", type=int, default=300, help="boosting iterations")
    ap.add_argument(
        "--inner-folds",
        type=int,
        default=0,
        help="CV inside each fold's training units to calibrate that fold's band (0: the "
        "fold models ship the raw quantile band; N >= 2 costs about N more fits per fold)",
    )
    ap.add_argument("--out", default=None, help="also write the report as JSON here")
    args = ap.parse_args(argv)
    params = TrainParams(folds=args.inner_folds, max_iter=args.max_iter, seed=args.seed % 2**31)
    report = evaluate(args.train, args.folds, args.seed, args.workdir, params)
    print(
        f"in-stream {report['folds']}-fold check on {report['train_file']}: "
        f"{report['units']} units, RMSE {report['rmse']:.2f}, NASA score "
        f"{report['nasa_score']:.1f} ({report['nasa_per_unit']:.2f} per unit), band coverage "
        f"{report['band_coverage']:.1%} (width {report['band_width']:.1f}); "
        f"{report['rows_replayed']} rows replayed in {report['replay_wall_s']:.1f}s "
        f"({report['rows_per_s']:.0f} rows/s); max |stream - offline| "
        f"{report['max_abs_stream_vs_offline']:.1e}",
        flush=True,
    )
    c = report["inference_cost"]
    print(
        f"per-prediction cost: features {c['features_us']:.1f} us + ONNX "
        f"{c['onnx_single_us']:.1f} us single-row = {c['per_prediction_single_us']:.1f} us; "
        f"ONNX batched ({c['batch']} rows) {c['onnx_batched_us']:.1f} us/row = "
        f"{c['per_prediction_batched_us']:.1f} us",
        flush=True,
    )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
