"""Train the RUL models, validate them as RUL is judged in practice, export ONNX, register.

    python -m models.train                                  # simulator data, all types
    python -m models.train --cmapss train_FD001.txt --out artifacts/fd001.onnx

Per equipment type: features from :mod:`models.features` (the code the flow runs), a
piecewise-linear target capped at ``--rul-cap``, unit-wise ``--folds``-fold cross-validation
with random truncation (RMSE, NASA score, band coverage), a final fit on every unit, ONNX
export with a parity gate, and an MLflow run that registers the bundle as
``predictive_maintenance_model`` with alias ``production``.

What is learned from the training units (inside each CV fold from that fold's training
units only, so validation never sees held-out statistics): the operating-condition
normaliser (``--condition-norm``), the sensors worth windowing (``--sensors auto`` drops
sensors that are constant within every condition) and the band calibration (conformalised
quantile regression on the held-out quantiles: ``--band-level`` coverage, cross-fitted).
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

from models.conditions import ConditionNormalizer, fit_normalizer
from models.dataset import (
    UnitFeatures,
    UnitHistory,
    conformal_offsets,
    featurize,
    nasa_score,
    rmse,
    training_rows,
    truncation_rows,
    unit_folds,
)
from models.drift import DriftReference
from models.equipment import EQUIPMENT_TYPES
from models.features import FeatureConfig
from models.onnx_export import as_float32_grid, export_onnx, parity, snap_thresholds
from models.rul import ModelMetadata, calibrated_band

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
    min_samples_leaf: int = 20
    quantile_max_iter: int = 150
    band_level: float = 0.8


@dataclass(frozen=True)
class FeatureOptions:
    """How to build the feature configuration from training units."""

    windows: tuple[int, ...] = (10, 30, 60)
    fft: bool = True
    fft_bands: int = 4
    condition_norm: str = "auto"  # auto | on | off
    sensors: str = "informative"  # informative (drop constant within every condition) | all
    operating_history: bool = False


def make_estimators(p: TrainParams) -> dict[str, HistGradientBoostingRegressor]:
    common = dict(
        learning_rate=p.learning_rate,
        max_leaf_nodes=p.max_leaf_nodes,
        min_samples_leaf=p.min_samples_leaf,
        early_stopping=False,
        random_state=p.seed,
    )
    ests = {"rul": HistGradientBoostingRegressor(max_iter=p.max_iter, **common)}
    if p.quantiles:
        for name, q in QUANTILES.items():
            ests[name] = HistGradientBoostingRegressor(
                loss="quantile", quantile=q, max_iter=p.quantile_max_iter, **common
            )
    return ests


def informative_sensors(
    units: Sequence[UnitHistory], normalizer: ConditionNormalizer | None
) -> np.ndarray:
    """Indices of the sensors that vary within at least one operating condition (a sensor
    that is constant, or a pure function of the condition, carries no wear signal)."""
    x = np.concatenate([u.sensors for u in units])
    labels = np.zeros(len(x), dtype=np.intp)
    if normalizer is not None:
        labels = normalizer.assign(np.concatenate([_settings(u) for u in units]))
    keep = np.zeros(x.shape[1], dtype=bool)
    for c in np.unique(labels):
        rows = x[labels == c]
        keep |= rows.std(axis=0) > 1e-9 * (np.abs(rows.mean(axis=0)) + 1.0)
    return np.flatnonzero(keep) if keep.any() else np.arange(x.shape[1])


def _settings(u: UnitHistory) -> np.ndarray:
    return u.settings if u.settings is not None else np.zeros((len(u.rul), 0))


def feature_config(
    equipment_type: str, windows: tuple[int, ...], fft: bool, bands: int
) -> FeatureConfig:
    """The catalog's fixed layout for a type: every sensor, no normaliser, no history."""
    etype = EQUIPMENT_TYPES[equipment_type]
    return FeatureConfig(etype.sensors, windows, etype.vibration_sensors if fft else (), bands)


def fit_feature_config(
    equipment_type: str,
    units: Sequence[UnitHistory],
    opts: FeatureOptions | FeatureConfig,
    seed: int = 0,
) -> FeatureConfig:
    """The feature configuration learned from ``units`` (sensors in the catalog's order);
    a :class:`FeatureConfig` given instead of options is used as it is."""
    if isinstance(opts, FeatureConfig):
        return opts
    etype = EQUIPMENT_TYPES[equipment_type]
    norm = None
    if opts.condition_norm != "off":
        if any(u.settings is None for u in units):
            if opts.condition_norm == "on":
                raise ValueError("--condition-norm on needs settings for every unit")
        else:
            norm = fit_normalizer(
                np.concatenate([_settings(u) for u in units]),
                np.concatenate([u.sensors for u in units]),
                etype.settings,
                etype.sensors,
                opts.condition_norm,
                seed,
            )
    idx = (
        informative_sensors(units, norm)
        if opts.sensors == "informative"
        else np.arange(len(etype.sensors))
    )
    sensors = tuple(etype.sensors[i] for i in idx)
    vib = tuple(s for s in etype.vibration_sensors if s in sensors) if opts.fft else ()
    return FeatureConfig(
        sensors,
        opts.windows,
        vib,
        opts.fft_bands,
        None if norm is None else norm.select(sensors),
        opts.operating_history,
    )


def featurize_for(
    equipment_type: str, units: Sequence[UnitHistory], config: FeatureConfig
) -> list[UnitFeatures]:
    """Features of catalog-ordered units under ``config`` (its sensor subset)."""
    names = EQUIPMENT_TYPES[equipment_type].sensors
    idx = [names.index(s) for s in config.sensors]
    return featurize([u.select(idx) for u in units], config)


def fit(units: Sequence[UnitFeatures], p: TrainParams) -> dict[str, HistGradientBoostingRegressor]:
    x, y = training_rows(units, p.rul_cap, p.stride)
    x = as_float32_grid(x)  # the model sees exactly what ONNX will see
    ests = make_estimators(p)
    for est in ests.values():
        est.fit(x, y)
        snap_thresholds(est)
    return ests


def cross_validate(
    equipment_type: str,
    units: Sequence[UnitHistory],
    opts: FeatureOptions | FeatureConfig,
    p: TrainParams,
    t0: float,
) -> dict[str, float]:
    """Unit-wise K-fold CV; each held-out unit truncated at 5 random points. The features
    are configured from each fold's training units only. The band is calibrated by
    cross-fitting: fold k's coverage uses offsets learned on the other folds."""
    folds = unit_folds(len(units), p.folds, p.seed)
    rng = np.random.default_rng(p.seed + 1)
    preds, trues, lows, highs, first, fold_of = [], [], [], [], [], []
    for k, test_idx in enumerate(folds):
        held = set(test_idx.tolist())
        test = [units[i] for i in test_idx]
        train = [u for i, u in enumerate(units) if i not in held]
        cfg = fit_feature_config(equipment_type, train, opts, p.seed)
        ests = fit(featurize_for(equipment_type, train, cfg), p)
        x, y, unit_idx = truncation_rows(
            featurize_for(equipment_type, test, cfg), p.rul_cap, rng, draws=5
        )
        x = as_float32_grid(x)
        pred = np.clip(ests["rul"].predict(x), 0, p.rul_cap)
        preds.append(pred)
        trues.append(y)
        first.append(np.r_[True, unit_idx[1:] != unit_idx[:-1]])
        fold_of.append(np.full(len(y), k))
        if p.quantiles:
            lows.append(ests["rul_lower"].predict(x))
            highs.append(ests["rul_upper"].predict(x))
        progress(f"  fold {k + 1}/{p.folds}: RMSE {rmse(pred, y):.2f}", t0)
    pred, true, one = np.concatenate(preds), np.concatenate(trues), np.concatenate(first)
    out = {
        "cv_rmse": rmse(pred, true),
        "cv_nasa_score": nasa_score(pred[one], true[one]),  # one truncation per unit, summed
        "cv_nasa_per_unit": nasa_score(pred, true) / len(pred),  # mean over all truncations
        "cv_units": float(len(units)),
        "cv_predictions": float(len(pred)),
    }
    if p.quantiles:
        out.update(band_metrics(pred, true, np.concatenate(lows), np.concatenate(highs),
                                np.concatenate(fold_of), p))  # fmt: skip
    return out


def band_metrics(
    pred: np.ndarray,
    true: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    fold: np.ndarray,
    p: TrainParams,
) -> dict[str, float]:
    """Raw and calibrated band coverage and width; the offsets to ship (from all folds)."""
    lo_raw, hi_raw = calibrated_band(pred, lower, upper, (0.0, 0.0), p.rul_cap)
    covered = np.zeros(len(true), dtype=bool)
    width = np.zeros(len(true))
    for k in np.unique(fold):
        cal, ev = fold != k, fold == k
        offsets = conformal_offsets(lower[cal], upper[cal], true[cal], p.band_level, pred[cal])
        lo, hi = calibrated_band(pred[ev], lower[ev], upper[ev], offsets, p.rul_cap)
        covered[ev] = (true[ev] >= lo) & (true[ev] <= hi)
        width[ev] = hi - lo
    off_lo, off_hi = conformal_offsets(lower, upper, true, p.band_level, pred)
    return {
        "cv_band_level": p.band_level,
        "cv_band_coverage": float(covered.mean()),
        "cv_band_width": float(width.mean()),
        "cv_band_coverage_raw": float(np.mean((true >= lo_raw) & (true <= hi_raw))),
        "cv_band_width_raw": float(np.mean(hi_raw - lo_raw)),
        "band_offset_lower": off_lo,
        "band_offset_upper": off_hi,
    }


def digest(units: Sequence[UnitHistory]) -> str:
    h = hashlib.sha256()
    for u in units:
        h.update(u.unit_id.encode())
        h.update(np.ascontiguousarray(u.sensors).tobytes())
    return h.hexdigest()[:16]


def train_type(
    equipment_type: str,
    units: Sequence[UnitHistory],
    opts: FeatureOptions | FeatureConfig,
    p: TrainParams,
    t0: float,
) -> tuple[bytes, dict[str, float]]:
    """Validate, fit and export one equipment type's model; returns ONNX bytes and metrics.
    ``opts`` are the options to learn the feature configuration from the units (in each CV
    fold and for the final fit), or a fixed :class:`FeatureConfig` with catalog sensors."""
    etype = EQUIPMENT_TYPES[equipment_type]
    progress(f"{equipment_type}: {len(units)} units, {sum(len(u.rul) for u in units)} rows", t0)
    metrics: dict[str, float] = {}
    if p.folds >= 2:
        metrics = cross_validate(equipment_type, units, opts, p, t0)
        progress(f"{equipment_type}: {summary(metrics, etype.rul_unit)}", t0)
    config = fit_feature_config(equipment_type, units, opts, p.seed)
    progress(
        f"{equipment_type}: {len(config.names)} features per step from "
        f"{len(config.sensors)} sensors, {config.n_conditions} operating condition(s)"
        + (" normalised" if config.conditions is not None else ""),
        t0,
    )
    feats = featurize_for(equipment_type, units, config)
    ests = fit(feats, p)
    x_all, _ = training_rows(feats, p.rul_cap, max(p.stride, 7))
    offsets = (metrics.get("band_offset_lower", 0.0), metrics.get("band_offset_upper", 0.0))
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
        conditions=config.conditions,
        operating_history=config.operating_history,
        band_offsets=offsets,
        band_level=p.band_level if "band_offset_lower" in metrics else 0.0,
        drift_reference=DriftReference.from_training(x_all, config.names).to_json(),
    )
    blob = export_onnx(ests, len(config.names), meta)
    gap = parity(blob, ests, x_all[:2000])
    progress(f"{equipment_type}: ONNX parity max |onnx - sklearn| = {gap:.2e}", t0)
    if gap > PARITY_TOLERANCE:
        raise SystemExit(
            f"ONNX parity gate failed for {equipment_type}: {gap} > {PARITY_TOLERANCE}"
        )
    metrics["onnx_parity_max_abs_diff"] = gap
    metrics["n_features"] = float(len(config.names))
    metrics["n_conditions"] = float(config.n_conditions)
    metrics["condition_normalised"] = float(config.conditions is not None)
    return blob, metrics


def summary(m: dict[str, float], unit: str) -> str:
    """One line of CV results."""
    text = (
        f"CV RMSE {m['cv_rmse']:.2f} {unit}, NASA score {m['cv_nasa_score']:.1f} "
        f"(sum over {m['cv_units']:.0f} units, one truncation each), "
        f"{m['cv_nasa_per_unit']:.2f} per unit"
    )
    if "cv_band_coverage" in m:
        text += (
            f", {m['cv_band_level']:.0%} band coverage {m['cv_band_coverage']:.1%} "
            f"(width {m['cv_band_width']:.1f}; uncalibrated {m['cv_band_coverage_raw']:.1%}, "
            f"width {m['cv_band_width_raw']:.1f})"
        )
    return text


def simulator_units(equipment_type: str, n_units: int, seed: int) -> list[UnitHistory]:
    from connectors.simulator import simulate_units

    return [
        UnitHistory(uid, sensors, rul, settings)
        for uid, settings, sensors, rul in simulate_units(equipment_type, n_units, seed)
    ]


def cmapss_units(paths: Sequence[str]) -> list[UnitHistory]:
    from connectors.cmapss import read_cmapss

    out = []
    for path in paths:
        for u in read_cmapss(path):
            out.append(UnitHistory(f"{path}#{u.unit}", u.sensors, u.rul_to_failure, u.settings))
    return out


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
    ap.add_argument(
        "--condition-norm",
        choices=("auto", "on", "off"),
        default="auto",
        help="normalise sensors per operating condition (auto: when settings show >1)",
    )
    ap.add_argument(
        "--sensors",
        choices=("auto", "informative", "all"),
        default="auto",
        help="informative: drop sensors constant within every operating condition; all: the "
        "catalog's (auto: informative for C-MAPSS; all for simulator data, whose models "
        "models.retrain rescores on stored history with every catalog sensor)",
    )
    ap.add_argument(
        "--operating-history",
        choices=("auto", "on", "off"),
        default="auto",
        help="age and share of readings per condition as features (auto: on for C-MAPSS, "
        "whose units are all seen from their first cycle; off for simulator data)",
    )
    ap.add_argument("--band-level", type=float, default=0.8, help="calibrated band coverage")
    ap.add_argument("--max-iter", type=int, default=300, help="boosting iterations")
    ap.add_argument("--quantile-max-iter", type=int, default=150, help="for the band models")
    ap.add_argument("--learning-rate", type=float, default=0.05)
    ap.add_argument("--max-leaf-nodes", type=int, default=15)
    ap.add_argument("--min-samples-leaf", type=int, default=20)
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
    if not 0.0 < args.band_level < 1.0:
        build_parser().error("--band-level must be in (0, 1)")
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
            learning_rate=args.learning_rate,
            max_leaf_nodes=args.max_leaf_nodes,
            seed=args.seed % 2**31,
            quantiles=not args.no_quantiles,
            min_samples_leaf=args.min_samples_leaf,
            quantile_max_iter=args.quantile_max_iter,
            band_level=args.band_level,
        )
        cmapss = bool(args.cmapss) and etype == "turbofan_engine"
        history = args.operating_history == "on" or (args.operating_history == "auto" and cmapss)
        sensors = args.sensors if args.sensors != "auto" else "informative" if cmapss else "all"
        opts = FeatureOptions(
            windows, not args.no_fft, args.fft_bands, args.condition_norm, sensors, history
        )
        blob, metrics = train_type(etype, units, opts, p, t0)
        blobs[etype] = blob
        all_metrics.update({f"{etype}.{k}": v for k, v in metrics.items()})
        if p.folds >= 2:
            print(f"{etype}: {summary(metrics, EQUIPMENT_TYPES[etype].rul_unit)}", flush=True)

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
            "quantiles": not args.no_quantiles, "condition_norm": args.condition_norm,
            "sensors": args.sensors, "operating_history": args.operating_history,
            "band_level": args.band_level, "max_iter": args.max_iter,
            "learning_rate": args.learning_rate, "max_leaf_nodes": args.max_leaf_nodes,
        })  # fmt: skip
        mlflow.log_metrics({k.replace("#", "_"): v for k, v in metrics.items()})
        for f in files:
            mlflow.log_artifact(str(f), artifact_path="onnx")
        return mlflow_registry.log_bundle(files, register=not args.no_register)


if __name__ == "__main__":
    raise SystemExit(main())
