"""Run the real dataflow in-process on given records, collecting everything it outputs."""

from __future__ import annotations

from typing import Any

from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from connectors.kafka_io import RawRecord
from connectors.settings import Settings
from flows.pipeline import build_flow
from models.schemas import Alert, DeadLetter, Origin, Prediction


def records_from_dicts(readings: list[dict[str, Any]], source: str = "test") -> list[RawRecord]:
    return [RawRecord(r, Origin(source, "0", i)) for i, r in enumerate(readings)]  # type: ignore[arg-type]


def run_flow(settings: Settings, records: list[Any], workers: int = 1, batch_size: int = 50):
    """Returns (predictions, alerts, dead letters) in output order."""
    out: list[Any] = []
    flow = build_flow(settings, source=TestingSource(records, batch_size), output=TestingSink(out))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    items = [x[1] if isinstance(x, tuple) else x for x in out]
    return (
        [x for x in items if isinstance(x, Prediction)],
        [x for x in items if isinstance(x, Alert)],
        [x for x in items if isinstance(x, DeadLetter)],
    )
