"""A small, known fleet written through the project's own PostgreSQL writer, for the fleet
CLI and web page tests (the risk order and alert figures below are what they assert)."""

from __future__ import annotations

from connectors.migrate import apply_migrations
from connectors.postgres_sink import PostgresWriter
from models.schemas import Alert, Prediction, Reading

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000

EVIL_ID = "pump-\x1b[31m<script>alert(1)</script>"

# equipment id -> (type, status, rul_hours, rul_lower_hours, rul_upper_hours, health)
MACHINES = {
    "pump-0001": ("pump", "critical", 10.0, 5.0, 15.0, 0.35),
    "turbofan-0002": ("turbofan_engine", "warning", 60.0, 40.0, 80.0, 0.80),
    "turbofan-0003": ("turbofan_engine", "warning", 50.0, 45.0, 55.0, 0.60),
    "turbofan-0004": ("turbofan_engine", "ok", 300.0, 250.0, 350.0, 0.95),
    EVIL_ID: ("pump", "ok", 400.0, None, None, 0.97),
}
# Highest risk first: critical; then warnings by RUL lower bound (40 < 45, although
# turbofan-0003's point RUL is lower); then ok by lower bound (no band: the point RUL).
RISK_ORDER = ["pump-0001", "turbofan-0002", "turbofan-0003", "turbofan-0004", EVIL_ID]

# pump-0001's rul_low flaps: fires, resolves 1 h later, fires again 2 h after that (within
# the 6 h dwell), then escalates. turbofan-0002's health_low fires and stays open.
ALERTS = [
    ("a-fire-1", "pump-0001", 10, "rul_low", "warning", "firing", 70.0, 72.0),
    ("a-res-1", "pump-0001", 11, "rul_low", "warning", "resolved", 81.0, 79.2),
    ("a-fire-2", "pump-0001", 13, "rul_low", "warning", "firing", 69.0, 72.0),
    ("a-esc-2", "pump-0001", 20, "rul_low", "critical", "escalated", 10.0, 24.0),
    ("h-fire-1", "turbofan-0002", 18, "health_low", "warning", "firing", 0.68, 0.7),
]
OPEN_ALERTS = {"a-esc-2", "h-fire-1"}
READINGS_PER_MACHINE = 24  # one an hour: machine-days = 23 h / 24 h


def _prediction(eq: str, hour: int, final: bool) -> Prediction:
    typ, status, rul, lo, hi, health = MACHINES[eq]
    # Earlier predictions are healthier, so only the last one decides the fleet status.
    extra = 0.0 if final else (READINGS_PER_MACHINE - hour) * 5.0
    return Prediction(
        equipment_id=eq,
        equipment_type=typ,
        ts_ms=T0 + hour * HOUR,
        rul=rul + extra,
        rul_unit="hours",
        rul_hours=rul + extra,
        rul_lower=None if lo is None else lo + extra,
        rul_upper=None if hi is None else hi + extra,
        health=health if final else min(1.0, health + 0.01 * (READINGS_PER_MACHINE - hour)),
        anomaly_score=0.5,
        status=status if final else "ok",
        model_name="rul",
        model_version="v-test",
        top_sensors=("T24", "T50"),
    )


def fill(dsn: str) -> None:
    """Migrate ``dsn`` and write the fleet above."""
    apply_migrations(dsn)
    with PostgresWriter(dsn, buffer_size=1000) as w:
        for eq, (typ, *_rest) in MACHINES.items():
            w.add_readings(
                Reading(eq, typ, T0 + h * HOUR, {"T24": 640.0 + h}, {})
                for h in range(READINGS_PER_MACHINE)
            )
            w.add_predictions(
                _prediction(eq, h, h == READINGS_PER_MACHINE - 1)
                for h in range(READINGS_PER_MACHINE)
            )
        w.add_alerts(
            Alert(aid, eq, T0 + h * HOUR, rule, sev, state, value, th, f"{eq}: {rule} {state}")
            for aid, eq, h, rule, sev, state, value, th in ALERTS
        )
