"""Golden outputs of the flow, recorded before the columnar engine rebuild: what a new
engine must reproduce (see tests/test_golden.py).

Two cases, each with its own small model kept here (so the golden files test the engine,
not the trainer):

* ``sim``: a simulated fleet of turbofans and pumps with injected faults (spikes, drifts,
  stuck sensors, level shifts), plus malformed inputs for the dead letters;
* ``cmapss``: a C-MAPSS-format replay of generated multi-condition units (condition
  normaliser and operating-history features on).

Regenerate (only on purpose, and say why in the commit): ``python -m tests.golden.record``
(add ``--retrain`` to train the two models again).
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

from connectors.settings import load_settings
from connectors.simulator import SimConfig, simulate
from models.schemas import Alert, DeadLetter, Prediction

HERE = Path(__file__).resolve().parent
SIM_MODEL, CMAPSS_MODEL = HERE / "model_sim", HERE / "model_cmapss"
CMAPSS_UNITS = (6, 9)  # generated units (count, seed): tests.test_evaluate_cmapss.cmapss_units
MALFORMED = [
    b'{"equipment_id": "x",',
    b'{"equipment_type": "pump", "ts": "2026-01-01T00:00:00Z", "sensors": {"a": 1}}',
    b'{"equipment_id": "p\\u0000", "equipment_type": "pump", "ts": "2026-01-01T00:00:00Z",'
    b' "sensors": {"a": 1}}',
    b"\xff\xfe",
]


def sim_readings() -> list[dict[str, Any]]:
    cfg = SimConfig(
        num_equipment=10,
        equipment_types=("turbofan_engine", "pump"),
        readings=220,
        seed=42,
        healthy_fraction=0.3,
        faults=("spike", "drift", "stuck", "level_shift"),
        fault_rate=0.01,
    )
    return [r for r, _ in simulate(cfg)]


def sim_records() -> list[Any]:
    from connectors.kafka_io import RawRecord
    from models.schemas import Origin

    records: list[Any] = [
        RawRecord(r, Origin("golden", "0", i))  # type: ignore[arg-type]
        for i, r in enumerate(sim_readings())
    ]
    for j, raw in enumerate(MALFORMED):  # spread through the stream
        records.insert(100 + 300 * j, RawRecord(raw, Origin("golden", "1", j)))
    return records


def write_cmapss(path: Path) -> Path:
    """The C-MAPSS-format file of the ``cmapss`` case (generated, deterministic)."""
    from models.evaluate_cmapss import format_cmapss
    from tests.test_evaluate_cmapss import cmapss_units

    path.write_text(format_cmapss(cmapss_units(*CMAPSS_UNITS)))
    return path


def cmapss_records() -> list[Any]:
    import tempfile

    from connectors.cmapss import cmapss_readings
    from connectors.kafka_io import RawRecord
    from models.schemas import Origin

    with tempfile.TemporaryDirectory() as tmp:
        path = write_cmapss(Path(tmp) / "golden_cmapss.txt")
        return [
            RawRecord(r, Origin("golden-cmapss", "0", i))  # type: ignore[arg-type]
            for i, r in enumerate(cmapss_readings(path))
        ]


def run_case(case: str) -> list[Any]:
    """The flow's outputs for a case, in one worker, in output order."""
    from tests.flow_helpers import run_flow

    model = SIM_MODEL if case == "sim" else CMAPSS_MODEL
    records = sim_records() if case == "sim" else cmapss_records()
    settings = load_settings(model=str(model), output="none", drift={"enabled": False})
    preds, alerts, dead = run_flow(settings, records)
    return [*preds, *alerts, *dead]


def as_row(x: Any) -> dict[str, Any]:
    if isinstance(x, Prediction):
        return {
            "kind": "prediction",
            "equipment_id": x.equipment_id,
            "ts_ms": x.ts_ms,
            "rul": x.rul,
            "rul_lower": x.rul_lower,
            "rul_upper": x.rul_upper,
            "health": x.health,
            "anomaly_score": x.anomaly_score,
            "status": x.status,
        }
    if isinstance(x, Alert):
        return {
            "kind": "alert",
            "equipment_id": x.equipment_id,
            "ts_ms": x.ts_ms,
            "rule": x.rule,
            "severity": x.severity,
            "state": x.state,
        }
    if isinstance(x, DeadLetter):
        return {"kind": "dead", "reason": x.reason, "equipment_id": x.equipment_id}
    raise TypeError(type(x))


def golden_path(case: str) -> Path:
    return HERE / f"{case}.jsonl.gz"


def load(case: str) -> list[dict[str, Any]]:
    with gzip.open(golden_path(case), "rt") as f:
        return [json.loads(line) for line in f]


def _train(retrain: bool) -> None:
    import tempfile

    from models.train import main as train

    small = ["--folds", "0", "--max-iter", "40", "--quantile-max-iter", "20", "--no-mlflow"]
    if retrain or not SIM_MODEL.exists():
        assert train([*small, "--units", "12", "--seed", "3", "--out", str(SIM_MODEL)]) == 0
    if retrain or not CMAPSS_MODEL.exists():
        with tempfile.TemporaryDirectory() as tmp:
            data = write_cmapss(Path(tmp) / "golden_cmapss.txt")
            args = [*small, "--cmapss", str(data), "--seed", "3", "--out", str(CMAPSS_MODEL)]
            assert train(args) == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retrain", action="store_true", help="train the two models again")
    args = parser.parse_args(argv)
    _train(args.retrain)
    for case in ("sim", "cmapss"):
        rows = [as_row(x) for x in run_case(case)]
        with gzip.open(golden_path(case), "wt") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        kinds = {k: sum(r["kind"] == k for r in rows) for k in ("prediction", "alert", "dead")}
        print(f"{case}: {kinds} -> {golden_path(case).relative_to(HERE.parent.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
