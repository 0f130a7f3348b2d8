"""Store per-feature drift (PSI) evaluations in the ``feature_drift`` table.

One evaluation is one statement: the rows go up as two arrays and are inserted with
``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING`` on the natural key
(equipment_type, model_version, feature, ts), so a replay after recovery writes nothing
twice. Only features whose PSI is at least ``floor`` are written, plus the largest one, so
every evaluation leaves at least one row (the maximum over time stays queryable).

Faults are the caller's to handle (``psycopg.Error``): the flow calls this about once a
minute per equipment type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg

from connectors.postgres_sink import ms_to_datetime

DEFAULT_FLOOR = 0.1  # PSI below this is "stable": not stored (except the evaluation's max)

_INSERT = """
    INSERT INTO feature_drift (ts, equipment_type, model_version, feature, psi)
    SELECT %(ts)s, %(etype)s, %(version)s, f, p
    FROM unnest(%(features)s::text[], %(psi)s::float8[]) AS u(f, p)
    ON CONFLICT DO NOTHING
"""


def drift_rows(
    names: Sequence[str], psi: np.ndarray, floor: float = DEFAULT_FLOOR
) -> tuple[list[str], list[float]]:
    """The (features, psi) an evaluation stores: PSI ≥ ``floor``, plus the largest.

    >>> drift_rows(["a", "b", "c"], np.array([0.02, 0.3, 0.05]))
    (['b'], [0.3])
    >>> drift_rows(["a", "b"], np.array([0.02, 0.01]))
    (['a'], [0.02])
    """
    psi = np.asarray(psi, dtype=np.float64)
    if psi.shape != (len(names),):
        raise ValueError(f"{len(names)} feature names but psi shaped {psi.shape}")
    finite = np.isfinite(psi)
    keep = finite & (psi >= floor)
    if finite.any():
        keep[int(np.argmax(np.where(finite, psi, -np.inf)))] = True
    idx = np.flatnonzero(keep)
    return [names[int(i)] for i in idx], [float(psi[i]) for i in idx]


def write_drift(
    dsn: str | psycopg.Connection[Any],
    ts_ms: int,
    equipment_type: str,
    model_version: str,
    names: Sequence[str],
    psi: np.ndarray,
    floor: float = DEFAULT_FLOOR,
) -> int:
    """Store one evaluation; returns the number of rows inserted (0 for a replay).

    ``dsn`` is a connection string (a connection is opened and closed) or an open
    connection (the insert is committed, unless the caller has a transaction open: then
    it is a savepoint in it)."""
    features, values = drift_rows(names, psi, floor)
    if not features:
        return 0
    params = {
        "ts": ms_to_datetime(ts_ms),
        "etype": equipment_type,
        "version": model_version,
        "features": features,
        "psi": values,
    }
    if isinstance(dsn, psycopg.Connection):
        return _insert(dsn, params)
    with psycopg.connect(dsn) as conn:
        return _insert(conn, params)


def _insert(conn: psycopg.Connection[Any], params: dict[str, Any]) -> int:
    # transaction(): commits at exit, or is a savepoint inside the caller's open transaction
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_INSERT, params)
        return cur.rowcount


def read_drift(
    dsn: str,
    equipment_type: str,
    model_version: str | None = None,
    since_ms: int | None = None,
) -> list[tuple[int, str, str, float]]:
    """Stored rows of a type as (ts_ms, model_version, feature, psi), oldest first."""
    query = (
        "SELECT (extract(epoch FROM ts) * 1000)::bigint, model_version, feature, psi"
        " FROM feature_drift WHERE equipment_type = %s"
        " AND (%s::text IS NULL OR model_version = %s)"
        " AND (%s::timestamptz IS NULL OR ts >= %s)"
        " ORDER BY ts, model_version, feature"
    )
    since = None if since_ms is None else ms_to_datetime(since_ms)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            query, (equipment_type, model_version, model_version, since, since)
        ).fetchall()
    return [(int(t), v, f, float(p)) for t, v, f, p in rows]
