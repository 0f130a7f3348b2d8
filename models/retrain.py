"""Retrain from stored history with a champion/challenger gate (``make retrain``).

    python -m models.retrain --database-url postgresql://pm:pm@127.0.0.1:5432/pm

1. Run-to-failure units come from PostgreSQL (``sensor_readings`` cut at the failures in
   ``maintenance_events``; see ``connectors.history``).
2. Units are split into training and held-out units (by unit, never by row).
3. A challenger is trained on the training units and exported to ONNX.
4. Challenger and the current champion (the ``production`` alias) are scored on the same
   held-out units with the same random truncations (RMSE against the capped true RUL, and
   the NASA score), both through their ONNX models, as the flow would run them.
5. The challenger is registered; the alias moves to it only if its RMSE beats the
   champion's by ``--margin`` (a fraction). The MLflow run records both scores and the
   decision.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.dataset import UnitHistory, featurize, nasa_score, rmse, truncation_rows
from models.equipment import EQUIPMENT_TYPES
from models.rul import RulModel
from models.train import TrainParams, feature_config, progress, train_type

REGISTRY_URI = "models:/predictive_maintenance_model@production"


def for_model(model: RulModel, units: Sequence[UnitHistory], etype: str) -> list[UnitHistory]:
    """Units with the model's sensors (and its normaliser's settings) in the model's order;
    ``units`` hold the catalog's sensors and settings."""
    catalog = EQUIPMENT_TYPES[etype]
    cols = [catalog.sensors.index(name) for name in model.meta.sensors]
    norm = model.meta.conditions
    out = []
    for u in units:
        settings = u.settings
        if norm is not None and settings is not None:
            settings = settings[:, [catalog.settings.index(n) for n in norm.settings]]
        out.append(UnitHistory(u.unit_id, u.sensors[:, cols], u.rul, settings))
    return out


def score(
    model: RulModel, units: Sequence[UnitHistory], etype: str, cap: float, seed: int
) -> dict[str, float]:
    """Truncation-protocol scores of an ONNX model on held-out units."""
    feats = featurize(for_model(model, units, etype), model.meta.feature_config)
    x, y, idx = truncation_rows(feats, cap, np.random.default_rng(seed), draws=5)
    pred, _, _ = model.predict(x)
    first = np.r_[True, idx[1:] != idx[:-1]]
    return {
        "rmse": rmse(pred, y),
        "nasa_score": nasa_score(pred[first], y[first]),
        "held_out_units": float(len(units)),
    }


def split_units(units: Sequence[UnitHistory], holdout: float, seed: int):
    """Shuffle units and hold out a fraction (at least one unit on each side)."""
    if len(units) < 2:
        raise SystemExit(f"need at least 2 run-to-failure units, found {len(units)}")
    order = np.random.default_rng(seed).permutation(len(units))
    n_test = min(max(1, round(holdout * len(units))), len(units) - 1)
    test = [units[i] for i in order[:n_test]]
    train = [units[i] for i in order[n_test:]]
    return train, test


def decide(challenger_rmse: float, champion_rmse: float | None, margin: float) -> bool:
    """Promote when there is no champion, or the challenger is better by ``margin``.

    >>> decide(10.0, 12.0, 0.05), decide(11.9, 12.0, 0.05), decide(20.0, None, 0.05)
    (True, False, True)
    """
    return champion_rmse is None or challenger_rmse < champion_rmse * (1.0 - margin)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m models.retrain", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--database-url", required=True, help="PostgreSQL with the stored history")
    ap.add_argument("--equipment-type", default="turbofan_engine", choices=sorted(EQUIPMENT_TYPES))
    ap.add_argument("--tracking-uri", default=None, help="MLflow URI (default: PM settings)")
    ap.add_argument("--champion", default=REGISTRY_URI, help="model to beat")
    ap.add_argument("--margin", type=float, default=0.02, help="required relative RMSE gain")
    ap.add_argument("--holdout", type=float, default=0.25, help="fraction of units held out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-iter", type=int, default=300)
    ap.add_argument("--rul-cap", type=float, default=125.0)
    ap.add_argument("--windows", default="10,30,60")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    from connectors import mlflow_registry
    from connectors.history import load_units
    from connectors.model_store import ModelLoadError, load_model, save_bundle
    from connectors.settings import load_settings

    uri = args.tracking_uri or load_settings().mlflow_tracking_uri
    etype = EQUIPMENT_TYPES[args.equipment_type]
    windows = tuple(int(w) for w in args.windows.split(","))
    cfg = feature_config(args.equipment_type, windows, True, 4)
    units = load_units(
        args.database_url, args.equipment_type, etype.sensors, etype.rul_unit, etype.settings
    )
    progress(f"history: {len(units)} run-to-failure {args.equipment_type} units", t0)
    train, test = split_units(units, args.holdout, args.seed)
    params = TrainParams(rul_cap=args.rul_cap, folds=0, max_iter=args.max_iter, seed=args.seed)
    blob, train_metrics = train_type(args.equipment_type, train, cfg, params, t0)
    challenger = RulModel(blob, "challenger")
    challenger_scores = score(challenger, test, args.equipment_type, args.rul_cap, args.seed)
    progress(f"challenger: RMSE {challenger_scores['rmse']:.2f} on {len(test)} units", t0)

    try:
        champion_bundle = load_model(args.champion, uri)
        champion = champion_bundle.for_type(args.equipment_type)
    except ModelLoadError as exc:
        progress(f"no champion ({exc}); the challenger wins by default", t0)
        champion_bundle, champion = None, None
    champion_scores = None
    if champion is not None and champion_bundle is not None:
        champion_scores = score(champion, test, args.equipment_type, args.rul_cap, args.seed)
        progress(f"champion v{champion_bundle.version}: RMSE {champion_scores['rmse']:.2f}", t0)
    champion_rmse = champion_scores["rmse"] if champion_scores else None
    promote = decide(challenger_scores["rmse"], champion_rmse, args.margin)

    mlflow_registry.setup(uri)
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        blobs = {args.equipment_type: blob}
        if champion_bundle is not None:  # keep the other types' models as they are
            for other, onnx_bytes in champion_bundle.blobs.items():
                if other != args.equipment_type:
                    blobs[other] = onnx_bytes
        files = save_bundle(blobs, Path(tmp) / "bundle")
        with mlflow.start_run(run_name="retrain"):
            champion_version = champion_bundle.version if champion_bundle else "none"
            mlflow.log_params({"equipment_type": args.equipment_type, "units": len(units),
                               "held_out_units": len(test), "margin": args.margin,
                               "champion": champion_version})  # fmt: skip
            mlflow.log_metrics({f"challenger_{k}": v for k, v in challenger_scores.items()})
            if champion_scores:
                mlflow.log_metrics({f"champion_{k}": v for k, v in champion_scores.items()})
            mlflow.log_metrics({f"train_{k}": v for k, v in train_metrics.items()})
            mlflow.set_tag("decision", "promote" if promote else "keep_champion")
            version = mlflow_registry.log_bundle(files, alias="production" if promote else None)
            mlflow.set_tag("challenger_version", version)
    verdict = "promoted to production" if promote else "registered, champion kept"
    progress(f"challenger version {version} {verdict}", t0)
    print(f"decision: {'promote' if promote else 'keep_champion'} (challenger version {version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
