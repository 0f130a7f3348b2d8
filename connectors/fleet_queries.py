"""Read the fleet's state from PostgreSQL (and optionally Redis) for the operator's tools.

Risk order (``risk_key``): the status severity first (critical, then warning, then ok,
then machines with no prediction yet), then the RUL lower bound in hours (the pessimistic
end of the band; the point estimate when there is no band; no RUL sorts last), then
health (lower first), then the equipment id. The top row is the machine to look at first.

An alert is *open* while the newest transition of its (equipment, rule) is not
``resolved``; acknowledging sets ``acknowledged_at`` / ``acknowledged_by`` on that row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

SEVERITY_RANK = {"critical": 2, "warning": 1, "ok": 0}
NO_STATUS_RANK = -1
MAX_ACK_NAME = 100

# rul_lower / rul_upper are in rul_unit: convert them to hours with the rul -> rul_hours
# factor (the same conversion as alerting.rules.rul_value_hours).
_BAND_HOURS = """
    CASE WHEN p.rul_unit = 'hours' THEN p.rul_lower
         WHEN p.rul IS NOT NULL AND p.rul <> 0 THEN p.rul_lower * p.rul_hours / p.rul
         ELSE NULL END AS rul_lower_hours,
    CASE WHEN p.rul_unit = 'hours' THEN p.rul_upper
         WHEN p.rul IS NOT NULL AND p.rul <> 0 THEN p.rul_upper * p.rul_hours / p.rul
         ELSE NULL END AS rul_upper_hours"""

_PREDICTION_COLUMNS = f"""p.ts, p.model_version, p.rul, p.rul_unit, p.rul_hours,
    {_BAND_HOURS}, p.health, p.anomaly_score, p.status, p.top_sensors"""

_LATEST = f"""
SELECT e.equipment_id, e.equipment_type, e.first_seen, e.last_seen, {_PREDICTION_COLUMNS},
       r.last_reading
FROM equipment e
LEFT JOIN LATERAL (
    SELECT * FROM predictions p0 WHERE p0.equipment_id = e.equipment_id
    ORDER BY p0.ts DESC, p0.model_version DESC LIMIT 1
) p ON true
LEFT JOIN LATERAL (
    SELECT max(ts) AS last_reading FROM sensor_readings s WHERE s.equipment_id = e.equipment_id
) r ON true
"""

# Newest transition per (equipment, rule); ties in time ordered firing < escalated < resolved.
_NEWEST_PER_RULE = """
SELECT DISTINCT ON (equipment_id, rule) alert_id, equipment_id, ts, rule, severity, state,
       value, threshold, message, acknowledged_at, acknowledged_by
FROM alerts
{where}
ORDER BY equipment_id, rule, ts DESC,
         array_position(ARRAY['resolved', 'escalated', 'firing'], state)
"""

_ALERT_COLUMNS = """alert_id, equipment_id, ts, rule, severity, state, value, threshold,
    message, acknowledged_at, acknowledged_by"""


class UnknownAlert(LookupError):
    """No alert has this id."""


@dataclass(frozen=True)
class MachineStatus:
    """The latest state of one machine, with its open alerts (``rule:severity``)."""

    equipment_id: str
    equipment_type: str | None
    ts: datetime | None
    status: str | None
    rul: float | None
    rul_unit: str | None
    rul_hours: float | None
    rul_lower_hours: float | None
    rul_upper_hours: float | None
    health: float | None
    anomaly_score: float | None
    model_version: str | None
    last_reading: datetime | None
    active_alerts: tuple[str, ...] = ()
    source: str = "postgres"

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["active_alerts"] = list(self.active_alerts)
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in d.items()}


def risk_key(m: MachineStatus) -> tuple[int, float, float, str]:
    """Sort key: higher risk first (see the module docstring)."""
    rank = SEVERITY_RANK.get(m.status or "", NO_STATUS_RANK)
    rul = m.rul_lower_hours if m.rul_lower_hours is not None else m.rul_hours
    rul_key = rul if rul is not None and math.isfinite(rul) else math.inf
    health = m.health if m.health is not None and math.isfinite(m.health) else math.inf
    return (-rank, rul_key, health, m.equipment_id)


def connect(dsn: str) -> psycopg.Connection[dict[str, Any]]:
    """A short-lived, autocommit connection returning rows as dicts."""
    return psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=5,
        application_name="pm-fleet",
        row_factory=dict_row,
    )


def fleet_status(
    conn: psycopg.Connection[dict[str, Any]],
    redis_status: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[MachineStatus]:
    """Every known machine, highest risk first. ``redis_status`` (equipment id -> the
    hash ``RedisStatusStore.read`` returns) replaces a machine's prediction fields when it
    is newer than PostgreSQL's latest prediction (the writer flushes in batches)."""
    active = _active_alerts(conn)
    machines = []
    for row in conn.execute(_LATEST).fetchall():
        row["active_alerts"] = tuple(active.get(row["equipment_id"], ()))
        fresh = (redis_status or {}).get(row["equipment_id"])
        if fresh and _newer(fresh, row["ts"]):
            row = {**row, **_from_redis(fresh), "source": "redis"}
        machines.append(_machine(row))
    return sorted(machines, key=risk_key)


def machine(conn: psycopg.Connection[dict[str, Any]], equipment_id: str) -> MachineStatus | None:
    """One machine's latest state, or None if the id is unknown."""
    row = conn.execute(_LATEST + " WHERE e.equipment_id = %s", [equipment_id]).fetchone()
    if row is None:
        return None
    row["active_alerts"] = tuple(_active_alerts(conn, equipment_id).get(equipment_id, ()))
    return _machine(row)


def history(
    conn: psycopg.Connection[dict[str, Any]], equipment_id: str, limit: int = 500
) -> list[dict[str, Any]]:
    """The machine's newest ``limit`` predictions, oldest first (RUL band in hours)."""
    rows = conn.execute(
        f"SELECT {_PREDICTION_COLUMNS} FROM predictions p WHERE p.equipment_id = %s"
        " ORDER BY p.ts DESC, p.model_version DESC LIMIT %s",
        [equipment_id, limit],
    ).fetchall()
    return rows[::-1]


def alerts_for(
    conn: psycopg.Connection[dict[str, Any]], equipment_id: str, limit: int = 200
) -> list[dict[str, Any]]:
    """The machine's newest ``limit`` alert transitions, oldest first."""
    rows = conn.execute(
        f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE equipment_id = %s"
        " ORDER BY ts DESC, alert_id LIMIT %s",
        [equipment_id, limit],
    ).fetchall()
    return rows[::-1]


def open_alerts(conn: psycopg.Connection[dict[str, Any]]) -> list[dict[str, Any]]:
    """Open alerts (newest transition of an (equipment, rule) not resolved), critical and
    unacknowledged first, then newest first."""
    rows = conn.execute(_NEWEST_PER_RULE.format(where="")).fetchall()
    rows = [r for r in rows if r["state"] != "resolved"]
    rows.sort(key=lambda r: r["ts"], reverse=True)
    rows.sort(
        key=lambda r: (r["acknowledged_at"] is not None, -SEVERITY_RANK.get(r["severity"], 0))
    )
    return rows


@dataclass(frozen=True)
class AckResult:
    alert_id: str
    equipment_id: str
    rule: str
    acknowledged_at: datetime
    acknowledged_by: str
    already: bool  # acknowledged before this call (the first acknowledgement is kept)


def check_ack_name(by: str) -> str:
    """The acknowledging person's name, stripped; ValueError when empty, too long or with
    control characters.

    >>> check_ack_name("  alice ")
    'alice'
    >>> check_ack_name("bob\\n")
    'bob'
    >>> check_ack_name("a\\x1bb")
    Traceback (most recent call last):
    ...
    ValueError: --by must be printable text (no control characters)
    """
    name = by.strip()
    if not name:
        raise ValueError("--by must name who acknowledges")
    if len(name) > MAX_ACK_NAME:
        raise ValueError(f"--by is limited to {MAX_ACK_NAME} characters")
    if not name.isprintable():
        raise ValueError("--by must be printable text (no control characters)")
    return name


def acknowledge(conn: psycopg.Connection[dict[str, Any]], alert_id: str, by: str) -> AckResult:
    """Acknowledge every row of ``alert_id``; idempotent (a second call keeps the first
    acknowledgement and reports ``already``). Raises UnknownAlert, or ValueError for a bad
    name."""
    name = check_ack_name(by)
    with conn.transaction():
        updated = conn.execute(
            "UPDATE alerts SET acknowledged_at = now(), acknowledged_by = %s"
            " WHERE alert_id = %s AND acknowledged_at IS NULL",
            [name, alert_id],
        ).rowcount
        row = conn.execute(
            "SELECT alert_id, equipment_id, rule, acknowledged_at, acknowledged_by"
            " FROM alerts WHERE alert_id = %s ORDER BY acknowledged_at LIMIT 1",
            [alert_id],
        ).fetchone()
    if row is None:
        raise UnknownAlert(alert_id)
    return AckResult(**row, already=updated == 0)


def all_alerts(conn: psycopg.Connection[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every alert transition, per (equipment, rule) in time order (alerts are few)."""
    return conn.execute(
        f"SELECT {_ALERT_COLUMNS} FROM alerts ORDER BY equipment_id, rule, ts,"
        " array_position(ARRAY['firing', 'escalated', 'resolved'], state)"
    ).fetchall()


def observed_spans(conn: psycopg.Connection[dict[str, Any]]) -> dict[str, tuple[str | None, float]]:
    """equipment id -> (type, event-time seconds between its first and last reading)."""
    rows = conn.execute(
        "SELECT equipment_id, equipment_type,"
        " extract(epoch FROM last_seen - first_seen)::float8 AS span_s FROM equipment"
    ).fetchall()
    return {r["equipment_id"]: (r["equipment_type"], r["span_s"]) for r in rows}


def _active_alerts(
    conn: psycopg.Connection[dict[str, Any]], equipment_id: str | None = None
) -> dict[str, list[str]]:
    where, params = ("WHERE equipment_id = %s", [equipment_id]) if equipment_id else ("", [])
    rows = conn.execute(_NEWEST_PER_RULE.format(where=where), params).fetchall()
    out: dict[str, list[str]] = {}
    for r in rows:
        if r["state"] != "resolved":
            out.setdefault(r["equipment_id"], []).append(f"{r['rule']}:{r['severity']}")
    return out


def _newer(fresh: Mapping[str, Any], pg_ts: datetime | None) -> bool:
    ts_ms = fresh.get("ts_ms")
    if not isinstance(ts_ms, int):
        return False
    return pg_ts is None or ts_ms > pg_ts.timestamp() * 1000.0


def _from_redis(h: Mapping[str, Any]) -> dict[str, Any]:
    rul, rul_hours = h.get("rul"), h.get("rul_hours")
    factor = (
        1.0 if h.get("rul_unit") == "hours" else (rul_hours / rul if rul and rul_hours else None)
    )

    def hours(x: Any) -> float | None:
        return x * factor if x is not None and factor is not None else None

    ts = datetime.fromisoformat(str(h["ts"]).replace("Z", "+00:00")) if h.get("ts") else None
    return {
        "ts": ts,
        "status": h.get("status"),
        "rul": rul,
        "rul_unit": h.get("rul_unit"),
        "rul_hours": rul_hours,
        "rul_lower_hours": hours(h.get("rul_lower")),
        "rul_upper_hours": hours(h.get("rul_upper")),
        "health": h.get("health"),
        "anomaly_score": h.get("anomaly_score"),
        "model_version": h.get("model_version"),
    }


def _machine(row: Mapping[str, Any]) -> MachineStatus:
    names = MachineStatus.__dataclass_fields__
    return MachineStatus(**{k: v for k, v in row.items() if k in names})
