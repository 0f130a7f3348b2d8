"""Training data from the history stored in PostgreSQL: readings cut into run-to-failure
units by the failure events in ``maintenance_events``.

Each equipment's readings are split at its events. A segment that ends in a ``failure``
is a unit whose RUL at each reading is the time left until that failure (in readings for
cycle-counted equipment, in hours for hour-counted); a segment ending in preventive
``maintenance``, or not ended yet, is censored and left out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

import numpy as np
import psycopg

from models.dataset import UnitHistory

READINGS_SQL = """
SELECT r.equipment_id, r.ts, r.sensors, r.settings
FROM sensor_readings r JOIN equipment e USING (equipment_id)
WHERE e.equipment_type = %s
ORDER BY r.equipment_id, r.ts
"""
EVENTS_SQL = """
SELECT m.equipment_id, m.ts, m.kind
FROM maintenance_events m JOIN equipment e USING (equipment_id)
WHERE e.equipment_type = %s
ORDER BY m.equipment_id, m.ts
"""


def load_units(
    dsn: str,
    equipment_type: str,
    sensors: Sequence[str],
    rul_unit: str,
    settings: Sequence[str] = (),
) -> list[UnitHistory]:
    """Run-to-failure units of one equipment type, sensors (and operating settings) in the
    given order."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(READINGS_SQL, (equipment_type,)).fetchall()
        events = conn.execute(EVENTS_SQL, (equipment_type,)).fetchall()
    by_eq: dict[str, list[tuple[datetime, dict, dict]]] = defaultdict(list)
    for eid, ts, values, setting_values in rows:
        by_eq[eid].append((ts, values, setting_values or {}))
    ev_by_eq: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    for eid, ts, kind in events:
        ev_by_eq[eid].append((ts, kind))
    units: list[UnitHistory] = []
    for eid, readings in by_eq.items():
        start = 0
        for n, (event_ts, kind) in enumerate(ev_by_eq.get(eid, [])):
            end = start
            while end < len(readings) and readings[end][0] <= event_ts:
                end += 1
            segment = readings[start:end]
            start = end
            if kind == "failure" and segment:
                units.append(_unit(f"{eid}#{n}", segment, event_ts, sensors, settings, rul_unit))
    return units


def _unit(unit_id, segment, failure_ts, sensors, settings, rul_unit) -> UnitHistory:
    x = _matrix([values for _, values, _ in segment], sensors)
    op = _matrix([values for _, _, values in segment], settings) if settings else None
    if rul_unit == "hours":
        rul = np.array([(failure_ts - ts).total_seconds() / 3600.0 for ts, _, _ in segment])
    else:  # cycles: readings left; the reading at the failure has RUL 0
        rul = np.arange(len(segment) - 1, -1, -1, dtype=float)
    return UnitHistory(unit_id, x, rul, op)


def _matrix(rows: list[dict], names: Sequence[str]) -> np.ndarray:
    """Rows of name -> value as a matrix; a missing value keeps the previous one (as the
    stream does), NaN until first seen."""
    x = np.full((len(rows), len(names)), np.nan)
    for i, values in enumerate(rows):
        for j, name in enumerate(names):
            v = values.get(name)
            if v is not None:
                x[i, j] = v
            elif i:
                x[i, j] = x[i - 1, j]
    return x


def record_events(dsn: str, events: Sequence[tuple[str, int, str]]) -> int:
    """Insert (equipment_id, ts_ms, kind) events idempotently; returns rows inserted."""
    from connectors.postgres_sink import ms_to_datetime

    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO maintenance_events (equipment_id, ts, kind) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            [(eid, ms_to_datetime(ts_ms), kind) for eid, ts_ms, kind in events],
        )
        return cur.rowcount
