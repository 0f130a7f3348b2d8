"""Maintenance windows (migration 008): planned work per machine, during which alerts are
stored but not notified; and the recorded repairs (migration 005) the flow re-baselines on.

* :func:`add_window` / :func:`list_windows`: what ``pm maintenance add`` / ``list`` run.
* :class:`WindowCache`: what the delivery worker asks, per alert, "is this machine in a
  window at the alert's event time?". It reads the table at most every ``refresh_s``
  seconds (a few rows; the newest ``MAX_WINDOWS``); if PostgreSQL cannot be read it keeps
  the windows it had (logged once per outage), so an outage never suppresses more than the
  operators asked for, and never blocks delivery.
* :class:`RepairCache`: each machine's recorded repairs (``maintenance_events``), re-read
  every ``refresh_s`` seconds, for the flow's state step (see ``flows.steps``).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from models.logsafe import redact

log = logging.getLogger(__name__)

MAX_WINDOWS = 10_000


@dataclass(frozen=True, slots=True)
class Window:
    """One maintenance window of one machine: ``[starts_at, ends_at)``."""

    id: int
    equipment_id: str
    starts_at: datetime
    ends_at: datetime
    reason: str
    created_by: str

    def covers(self, ts_ms: int) -> bool:
        return self.starts_at.timestamp() * 1000 <= ts_ms < self.ends_at.timestamp() * 1000

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "equipment_id": self.equipment_id,
            "starts_at": self.starts_at.astimezone(UTC).isoformat(),
            "ends_at": self.ends_at.astimezone(UTC).isoformat(),
            "reason": self.reason,
            "created_by": self.created_by,
        }


_COLUMNS = "id, equipment_id, starts_at, ends_at, reason, created_by"


def add_window(
    dsn: str, equipment_id: str, starts_at: datetime, ends_at: datetime, reason: str, by: str
) -> Window:
    """Insert one window (ValueError when it ends before it starts)."""
    if not ends_at > starts_at:
        raise ValueError(f"the window must end after it starts ({starts_at} .. {ends_at})")
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(
            f"INSERT INTO maintenance_windows (equipment_id, starts_at, ends_at, reason,"
            f" created_by) VALUES (%s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (equipment_id, starts_at, ends_at, reason, by),
        ).fetchone()
    assert row is not None
    return Window(*row)


def list_windows(
    dsn: str, equipment_id: str | None = None, limit: int = MAX_WINDOWS
) -> list[Window]:
    """Windows, newest end first (one machine's with ``equipment_id``)."""
    where = "WHERE equipment_id = %(eq)s" if equipment_id is not None else ""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM maintenance_windows {where}"
            " ORDER BY ends_at DESC, id DESC LIMIT %(limit)s",
            {"eq": equipment_id, "limit": limit},
        ).fetchall()
    return [Window(*r) for r in rows]


class WindowCache:
    """The windows by machine, re-read at most every ``refresh_s`` seconds. Thread-safe."""

    def __init__(
        self,
        load: Callable[[], list[Window]],
        refresh_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        secrets: Sequence[str] = (),
    ) -> None:
        self._load = load
        self._secrets = list(secrets)
        self.refresh_s = refresh_s
        self._clock = clock
        self._by_machine: dict[str, list[Window]] = {}
        self._loaded_at: float | None = None
        self._down = False
        self._lock = threading.Lock()

    @classmethod
    def from_dsn(cls, dsn: str, refresh_s: float = 30.0) -> WindowCache:
        return cls(lambda: list_windows(dsn), refresh_s, secrets=[dsn])

    def window_for(self, equipment_id: str, ts_ms: int) -> Window | None:
        """The window covering this machine at event time ``ts_ms``, if any."""
        with self._lock:
            self._refresh()
            for w in self._by_machine.get(equipment_id, ()):
                if w.covers(ts_ms):
                    return w
        return None

    def _refresh(self) -> None:
        now = self._clock()
        if self._loaded_at is not None and now - self._loaded_at < self.refresh_s:
            return
        self._loaded_at = now
        try:
            windows = self._load()
        except psycopg.Error as exc:
            if not self._down:
                first = redact((str(exc).strip().splitlines() or [""])[0], self._secrets)
                log.warning("maintenance windows: cannot read them (%s: %s); keeping the %d "
                            "known", type(exc).__name__, first[:200],
                            sum(map(len, self._by_machine.values())))  # fmt: skip
            self._down = True
            return
        if self._down:
            log.warning("maintenance windows: readable again")
            self._down = False
        by_machine: dict[str, list[Window]] = {}
        for w in windows:
            by_machine.setdefault(w.equipment_id, []).append(w)
        self._by_machine = by_machine


def load_repairs(dsn: str) -> dict[str, list[int]]:
    """Every machine's recorded repairs (``maintenance_events``, migration 005: failures
    and preventive maintenance alike end a unit's life) as sorted event times in ms."""
    with psycopg.connect(dsn, connect_timeout=5, options="-c statement_timeout=5000") as conn:
        rows = conn.execute(
            "SELECT equipment_id, array_agg((extract(epoch FROM ts) * 1000)::bigint ORDER BY ts)"
            " FROM maintenance_events GROUP BY equipment_id"
        ).fetchall()
    return {str(eq): [int(t) for t in ts] for eq, ts in rows}


class RepairCache:
    """The recorded repairs per machine, re-read at most every ``refresh_s`` seconds (in
    the calling thread: one short query); an unreadable table keeps what was known
    (logged once per outage)."""

    def __init__(
        self,
        load: Callable[[], dict[str, list[int]]],
        refresh_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        secrets: Sequence[str] = (),
    ) -> None:
        self._load = load
        self.refresh_s = refresh_s
        self._clock = clock
        self._secrets = list(secrets)
        self._repairs: dict[str, list[int]] = {}
        self._loaded_at: float | None = None
        self._down = False

    @classmethod
    def from_dsn(cls, dsn: str, refresh_s: float = 30.0) -> RepairCache:
        return cls(lambda: load_repairs(dsn), refresh_s, secrets=[dsn])

    def refresh(self) -> None:
        """Re-read the table if the last read is older than ``refresh_s``."""
        now = self._clock()
        if self._loaded_at is not None and now - self._loaded_at < self.refresh_s:
            return
        self._loaded_at = now
        try:
            self._repairs = self._load()
        except psycopg.Error as exc:
            if not self._down:
                first = redact((str(exc).strip().splitlines() or [""])[0], self._secrets)
                log.warning("maintenance events: cannot read them (%s: %s); re-baselining "
                            "goes on with the %d machine(s) known", type(exc).__name__,
                            first[:200], len(self._repairs))  # fmt: skip
            self._down = True
            return
        if self._down:
            log.warning("maintenance events: readable again")
            self._down = False

    def last_repair(self, equipment_id: str, ts_ms: int) -> int | None:
        """The latest recorded repair of this machine at or before ``ts_ms``, if any."""
        times = self._repairs.get(equipment_id)
        if not times:
            return None
        i = bisect.bisect_right(times, ts_ms)
        return times[i - 1] if i else None
