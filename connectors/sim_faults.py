"""Fault injection for the simulator: spike, drift and stuck episodes on one sensor at a time.

- spike: one reading of one sensor jumps up by 6-10 sigma;
- drift: one sensor ramps linearly away (either sign) to 6-10 sigma over 20-50 readings, then
  snaps back (recalibrated);
- stuck: one sensor repeats its last emitted value for 20-50 readings.

"Sigma" is the sensor's noise std (at least its printed resolution; for pump vibration, the
healthy RMS). Sensors that never vary are never chosen. Episodes start with probability
``rate`` per reading (never while one is active). Start draws
and episode parameters use separate generators, one uniform per reading, so the result does not
depend on how an equipment's readings are chunked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from connectors.sim_models import EquipmentModel

FAULT_KINDS = ("spike", "drift", "stuck")


@dataclass
class Episode:
    kind: str
    col: int
    start: int  # global reading index of the equipment
    end: int  # inclusive; clipped to the equipment's last reading
    length: int  # planned number of readings (a drift ramps over this many)
    size: float  # signed spike height / final drift offset, or the stuck value


class FaultInjector:
    """Injects spike / drift / stuck episodes into one equipment's sensor blocks, in place."""

    def __init__(
        self,
        model: EquipmentModel,
        kinds: tuple[str, ...],
        rate: float,
        n_total: int,
        start_rng: np.random.Generator,
        param_rng: np.random.Generator,
    ) -> None:
        self.kinds, self.rate, self.n_total = kinds, rate, n_total
        self.scale, self.decimals = model.fault_scale, model.decimals
        self.candidates = np.flatnonzero(self.scale > 0)
        self.start_rng, self.param_rng = start_rng, param_rng
        self.active: Episode | None = None
        self.last_row: np.ndarray | None = None

    def _new(self, g: int, x: np.ndarray, i: int) -> Episode:
        r = self.param_rng
        kind = self.kinds[int(r.integers(len(self.kinds)))]
        col = int(self.candidates[int(r.integers(len(self.candidates)))])
        length = 1 if kind == "spike" else int(r.integers(20, 51))
        height = float(r.uniform(6.0, 10.0)) * self.scale[col]
        sign = 1.0 if r.random() < 0.5 else -1.0
        end = min(g + length - 1, self.n_total - 1)
        if kind == "spike":
            return Episode(kind, col, g, end, length, height)
        if kind == "drift":
            return Episode(kind, col, g, end, length, sign * height)
        prev = x[i - 1] if i > 0 else self.last_row
        return Episode(kind, col, g, end, length, float((x[i] if prev is None else prev)[col]))

    def apply(self, x: np.ndarray, g0: int) -> list[Episode | None]:
        """Modify block ``x`` (rows = readings g0, g0+1, ...) and label each row's episode."""
        n = len(x)
        starts = self.start_rng.random(n) < self.rate
        labels: list[Episode | None] = [None] * n
        i = 0
        while i < n:
            ep = self.active
            if ep is None:
                nxt = np.flatnonzero(starts[i:])
                if nxt.size == 0:
                    break
                i += int(nxt[0])
                ep = self.active = self._new(g0 + i, x, i)
            stop = min(n, ep.end - g0 + 1)
            if ep.kind == "stuck":
                x[i:stop, ep.col] = ep.size
            else:
                steps = np.arange(g0 + i, g0 + stop) - ep.start + 1
                ramp = steps / ep.length if ep.kind == "drift" else 1.0
                dec = self.decimals[ep.col]
                x[i:stop, ep.col] = np.round(x[i:stop, ep.col] + ep.size * ramp, dec) + 0.0
            labels[i:stop] = [ep] * (stop - i)
            if g0 + stop - 1 == ep.end:
                self.active = None
            i = stop
        if n:
            self.last_row = x[-1].copy()
        return labels
