"""NASA C-MAPSS files: 26 whitespace-separated columns per row (unit, cycle, three
operational settings, 21 sensors), one row per engine cycle.

:func:`read_cmapss` loads a file as per-unit arrays for training; :func:`cmapss_readings`
replays it as readings of the common schema (one reading per cycle, ``equipment_id`` ending
in the unit number, event time advancing one ``cycle_seconds`` per cycle).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.equipment import CMAPSS_SENSORS, CMAPSS_SETTINGS
from models.schemas import ms_to_iso

N_COLUMNS = 26
DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class CmapssUnit:
    """One engine's history from a C-MAPSS file."""

    unit: int
    cycles: np.ndarray  # (T,)
    settings: np.ndarray  # (T, 3)
    sensors: np.ndarray  # (T, 21)

    @property
    def rul_to_failure(self) -> np.ndarray:
        """True RUL at each cycle, assuming the unit fails after its last cycle (train files)."""
        return (self.cycles[-1] - self.cycles).astype(np.float64)


def _load(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"C-MAPSS file not found: {path}")
    data = np.loadtxt(path, ndmin=2)
    if data.shape[1] != N_COLUMNS:
        raise ValueError(f"{path}: expected {N_COLUMNS} columns, found {data.shape[1]}")
    return data


def read_cmapss(path: str | Path) -> list[CmapssUnit]:
    """All units of a C-MAPSS file, in file order of first appearance."""
    data = _load(path)
    units = []
    ids = data[:, 0].astype(int)
    for unit in dict.fromkeys(ids.tolist()):
        rows = data[ids == unit]
        units.append(CmapssUnit(unit, rows[:, 1].astype(int), rows[:, 2:5], rows[:, 5:26]))
    return units


def equipment_id_for(unit: int, prefix: str = "cmapss") -> str:
    """The equipment id of a C-MAPSS unit.

    >>> equipment_id_for(7)
    'cmapss-0007'
    """
    return f"{prefix}-{unit:04d}"


def cmapss_readings(
    path: str | Path,
    *,
    start_ms: int = DEFAULT_START_MS,
    cycle_seconds: float = 3600.0,
    prefix: str = "cmapss",
) -> Iterator[dict]:
    """Replay a C-MAPSS file as wire-format reading dicts, in file order."""
    step_ms = round(cycle_seconds * 1000)
    for row in _load(path):
        unit, cycle = int(row[0]), int(row[1])
        yield {
            "equipment_id": equipment_id_for(unit, prefix),
            "equipment_type": "turbofan_engine",
            "ts": ms_to_iso(start_ms + (cycle - 1) * step_ms),
            "settings": dict(zip(CMAPSS_SETTINGS, row[2:5].tolist(), strict=True)),
            "sensors": dict(zip(CMAPSS_SENSORS, row[5:26].tolist(), strict=True)),
            "schema_version": 1,
        }
