"""Train the RUL models, validate them as RUL is judged in practice, export ONNX, register.

    python -m models.train                                  # simulator data, all types
    python -m models.train --cmapss train_FD001.txt --out artifacts/fd001.onnx

Per equipment type: features from :mod:`models.features` (the code the flow runs), a
piecewise-linear target capped at ``--rul-cap``, unit-wise ``--folds``-fold cross-validation
with random truncation (RMSE, NASA score, band coverage), a final fit on every unit, ONNX
export with a parity gate, and an MLflow run that registers the bundle as
``predictive_maintenance_model`` with alias ``production``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor

from models.dataset import (
    UnitFeatures,
    UnitHistory,
    featurize,
    nasa_score,
    rmse,
    training_rows,
    truncation_rows,
    unit_folds,
)
from models.equipment import EQUIPMENT_TYPES
from models.features import FeatureConfig
from models.onnx_export import as_float32_grid, export_onnx, parity, snap_thresholds
from models.rul import ModelMetadata

MODEL_NAME = "predictive_maintenance_model"
PARITY_TOLERANCE = 1e-3  # in RUL units
QUANTILES = {"rul_lower": 0.1, "rul_upper": 0.9}


def progress(msg: str, t0: float = 0.0) -> None:
    stamp = f"[{time.perf_counter() - t0:6.1f}s] " if t0 else ""
    print(f"{stamp}{msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TrainParams:
    rul_cap: float = 125.0
    folds: int = 5
    stride: int = 1
    max_iter: int = 300
    learning_rate: float = 0.05
    max_leaf_nodes: int = 15
    seed: int = 0
    quantiles: bool = True


def make_estimators(p: TrainParams) -> dict[str, HistGradientBoostingRegressor]:
    common = dict(
        max_iter=p.max_iter,
        learning_rate=p.learning_rate,
        max_leaf_nodes=p.max_leaf_nodes,
        early_stopping=False,
        random_state=p.seed,
    )
    ests = {"rul": HistGradientBoostingRegressor(**common)}
    if p.quantiles:
        for name, q in QUANTILES.items():
            ests[name] = HistGradientBoostingRegressor(loss="quantile", quantile=q, **common)
    return ests


def fit(units: Sequence[UnitFeatures], p: TrainParams) -> dict[str, HistGradientBoostingRegressor]:
    x, y = training_rows(units, p.rul_cap, p.stride)
    x = as_float32_grid(x)  # the model sees exactly what ONNX will see
    ests = make_estimators(p)
    for est in ests.values():
        est.fit(x, y)
        snap_thresholds(est)
    return ests


def cross_validate(units: Sequence[UnitFeatures], p: TrainParams, t0: float) -> dict[str, float]:
    """Unit-wise K-fold CV; each held-out unit truncated at 5 random points."""
    folds = unit_folds(len(units), p.folds, p.seed)
    rng = np.random.default_rng(p.seed + 1)
    preds, trues, lows, highs, first = [], [], [], [], []
    for k, test_idx in enumerate(folds):
        test = [units[i] for i in test_idx]
        train = [u for i, u in enumerate(units) if i not in set(test_idx.tolist())]
        ests = fit(train, p)
        x, y, unit_idx = truncation_rows(test, p.rul_cap, rng, draws=5)
        x = as_float32_grid(x)
        pred = np.clip(ests["rul"].predict(x), 0, p.rul_cap)
        preds.append(pred)
        trues.append(y)
        first.append(np.r_[True, unit_idx[1:] != unit_idx[:-1]])
        if p.quantiles:
            lows.append(ests["rul_lower"].predict(x))
            highs.append(ests["rul_upper"].predict(x))
        progress(f"  fold {k + 1}/{p.folds}: RMSE {rmse(pred, y):.2f}", t0)
    pred, true, one = np.concatenate(preds), np.concatenate(trues), np.concatenate(first)
    out = {
        "cv_rmse": rmse(pred, true),
        "cv_nasa_score": nasa_score(pred[one], true[one]),  # one truncation per unit, summed
        "cv_nasa_per_unit": nasa_score(pred, true) / len(pred),
        "cv_units": float(len(units)),
    }
    if p.quantiles:
        lo, hi = np.concatenate(lows), np.concatenate(highs)
        out["cv_band_coverage"] = float(np.mean((true >= lo) & (true <= hi)))
        out["cv_band_width"] = float(np.mean(hi - lo))
    return out


def digest(units: Sequence[UnitHistory]) -> str:
    h = hashlib.sha256()
    for u in units:
        h.update(u.unit_id.encode())
        h.update(np.ascontiguousarray(u.sensors).tobytes())
    return h.hexdigest()[:16]


def train_type(
    equipment_type: str,
    units: Sequence[UnitHistory],
    config: FeatureConfig,
    p: TrainParams,
    t0: float,
) -> tuple[bytes, dict[str, float]]:
    """Validate, fit and export one equipment type's model; returns ONNX bytes and metrics."""
    etype = EQUIPMENT_TYPES[equipment_type]
    progress(f"{equipment_type}: {len(units)} units, {sum(len(u.rul) for u in units)} rows", t0)
    feats = featurize(units, config)
    progress(f"{equipment_type}: {len(config.names)} features per step", t0)
    metrics: dict[str, float] = {}
    if p.folds >= 2:
        metrics = cross_validate(feats, p, t0)
        progress(
            f"{equipment_type}: CV RMSE {metrics['cv_rmse']:.2f} {etype.rul_unit}, "
            f"NASA score {metrics['cv_nasa_score']:.1f} (sum over {len(units)} units)"
            + (
                f", band coverage {metrics['cv_band_coverage']:.1%}"
                if "cv_band_coverage" in metrics
                else ""
            ),
            t0,
        )
    ests = fit(feats, p)
    x_all, _ = training_rows(feats, p.rul_cap, max(p.stride, 7))
    meta = ModelMetadata(
        model_name=MODEL_NAME,
        equipment_type=equipment_type,
        feature_names=config.names,
        sensors=config.sensors,
        windows=config.windows,
        fft_sensors=config.fft_sensors,
        fft_bands=config.fft_bands,
        rul_unit=etype.rul_unit,
        rul_cap=p.rul_cap,
        hours_per_reading=etype.hours_per_reading,
        feature_means=tuple(float(v) for v in np.nanmean(x_all, axis=0)),
        training_digest=digest(units),
    )
    blob = export_onnx(ests, len(config.names), meta)
    gap = parity(blob, ests, x_all[:2000])
    progress(f"{equipment_type}: ONNX parity max |onnx - sklearn| = {gap:.2e}", t0)
    if gap > PARITY_TOLERANCE:
        raise SystemExit(
            f"ONNX parity gate failed for {equipment_type}: {gap} > {PARITY_TOLERANCE}"
        )
    metrics["onnx_parity_max_abs_diff"] = gap
    return blob, metrics


def simulator_units(equipment_type: str, n_units: int, seed: int) -> list[UnitHistory]:
    from connectors.simulator import simulate_units

    return [
        UnitHistory(uid, sensors, rul)
        for uid, _settings, sensors, rul in simulate_units(equipment_type, n_units, seed)
    ]


def cmapss_units(paths: Sequence[str]) -> list[UnitHistory]:
    from connectors.cmapss import read_cmapss

    out = []
    for path in paths:
        for u in read_cmapss(path):
            out.append(UnitHistory(f"{path}#{u.unit}", u.sensors, u.rul_to_failure))
    return out


def feature_config(equipment_type: str, windows: tuple[int, ...], fft: bool, bands: int):
    etype = EQUIPMENT_TYPES[equipment_type]
    return FeatureConfig(etype.sensors, windows, etype.vibration_sensors if fft else (), bands)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--cmapss",
        action="append",
        default=[],
        metavar="TRAIN_FILE",
        help="C-MAPSS training file (repeatable); trains the turbofan_engine model",
    )
    ap.add_argument(
        "--equipment-type",
        action="append",
        default=[],
        choices=sorted(EQUIPMENT_TYPES),
        help="simulator types to train (repeatable)",
    )
    ap.add_argument("--units", type=int, default=100, help="simulated units per type")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--rul-cap", type=float, default=125.0)
    ap.add_argument("--folds", type=int, default=5, help="unit-wise CV folds (0/1: skip CV)")
    ap.add_argument("--stride", type=int, default=0, help="keep every Nth training row (0: auto)")
    ap.add_argument("--windows", default="10,30,60", help="feature windows in readings")
    ap.add_argument("--no-fft", action="store_true", help="train without FFT features")
    ap.add_argument("--fft-bands", type=int, default=4)
    ap.add_argument("--no-quantiles", action="store_true", help="skip the uncertainty band")
    ap.add_argument("--max-iter", type=int, default=300, help="boosting iterations")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="60 units per type and no CV: a demo model in about a minute",
    )
    ap.add_argument("--out", default="artifacts/model", help="bundle directory or MODEL.onnx")
    ap.add_argument("--tracking-uri", default=None, help="MLflow URI (default: PM settings)")
    ap.add_argument("--no-mlflow", action="store_true", help="do not log or register")
    ap.add_argument("--no-register", action="store_true", help="log the run but do not register")
    ap.add_argument("--metrics-out", default=None, help="also write the metrics as JSON here")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        windows = tuple(int(w) for w in args.windows.split(","))
        FeatureConfig(("x",), windows)
    except ValueError as exc:
        build_parser().error(f"--windows: {exc}")
    if args.quick:
        args.units, args.folds = min(args.units, 60), 0
    jobs: dict[str, list[UnitHistory]] = {}
    if args.cmapss:
        jobs["turbofan_engine"] = cmapss_units(args.cmapss)
    for etype in args.equipment_type or ([] if args.cmapss else sorted(EQUIPMENT_TYPES)):
        if etype not in jobs:
            progress(f"simulating {args.units} {etype} units to failure (seed {args.seed})", t0)
            jobs[etype] = simulator_units(etype, args.units, args.seed)

    blobs: dict[str, bytes] = {}
    all_metrics: dict[str, float] = {}
    for etype, units in jobs.items():
        rows = sum(len(u.rul) for u in units)
        stride = args.stride or max(1, rows // 20_000)
        p = TrainParams(
            args.rul_cap,
            args.folds,
            stride,
            max_iter=args.max_iter,
            seed=args.seed % 2**31,
            quantiles=not args.no_quantiles,
        )
        cfg = feature_config(etype, windows, not args.no_fft, args.fft_bands)
        blob, metrics = train_type(etype, units, cfg, p, t0)
        blobs[etype] = blob
        all_metrics.update({f"{etype}.{k}": v for k, v in metrics.items()})

    from connectors.model_store import save_bundle

    files = save_bundle(blobs, args.out)
    progress(f"wrote {', '.join(map(str, files))}", t0)
    if args.metrics_out:
        with open(args.metrics_out, "w") as fh:
            json.dump(all_metrics, fh, indent=2)
    if not args.no_mlflow:
        version = _track(args, windows, all_metrics, files, jobs)
        progress(
            f"MLflow: registered {MODEL_NAME} version {version} (alias production)"
            if version
            else "MLflow: run logged (not registered)",
            t0,
        )
    progress("done", t0)
    return 0


def _track(args, windows, metrics, files, jobs) -> str | None:
    from connectors import mlflow_registry
    from connectors.settings import load_settings

    uri = args.tracking_uri or load_settings().mlflow_tracking_uri
    mlflow_registry.setup(uri)
    import mlflow

    with mlflow.start_run(run_name="train"):
        mlflow.log_params({
            "data": ",".join(args.cmapss) or "simulator",
            "equipment_types": ",".join(jobs),
            "units": json.dumps({k: len(v) for k, v in jobs.items()}),
            "seed": args.seed, "rul_cap": args.rul_cap, "folds": args.folds,
            "windows": ",".join(map(str, windows)), "fft": not args.no_fft,
            "fft_bands": args.fft_bands, "estimator": "HistGradientBoostingRegressor",
            "quantiles": not args.no_quantiles,
        })  # fmt: skip
        mlflow.log_metrics({k.replace("#", "_"): v for k, v in metrics.items()})
        for f in files:
            mlflow.log_artifact(str(f), artifact_path="onnx")
        return mlflow_registry.log_bundle(files, register=not args.no_register)


if __name__ == "__main__":
    raise SystemExit(main())
