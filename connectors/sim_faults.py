"""Fault injection for the simulator: spike, drift, stuck and level-shift episodes on one
sensor at a time.

- spike: one reading of one sensor jumps up by 6-10 sigma;
- drift: one sensor ramps linearly away (either sign) to 6-10 sigma over 20-50 readings, then
  snaps back (recalibrated);
- stuck: one sensor repeats its last emitted value for 20-50 readings;
- level_shift: one sensor's level jumps (either sign) by 4-8 sigma and *stays* there for the
  rest of the run, like a sensor re-fitted or recalibrated during maintenance. The episode
  (what ground truth labels) is the jump and the 20-50 readings after it in which the shift
  is news; after that the shifted level is the new normal (no longer labelled, still shifted;
  ``FaultInjector.offsets`` holds the shifts in force). Shifts are whole multiples of the
  sensor's resolution, so the numbers do not depend on chunking.

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

FAULT_KINDS = ("spike", "drift", "stuck", "level_shift")


@dataclass
class Episode:
    kind: str
    col: int
    start: int  # global reading index of the equipment
    end: int  # inclusive; clipped to the equipment's last reading
    length: int  # planned number of readings (a drift ramps over this many)
    size: float  # signed spike height / final drift offset / level shift, or the stuck value


class FaultInjector:
    """Injects fault episodes into one equipment's sensor blocks, in place."""

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
        self.offsets = np.zeros(len(self.scale))  # level shifts in force, per sensor

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
        if kind == "level_shift":
            shift = sign * float(r.uniform(4.0, 8.0)) * self.scale[col]
            step = 10.0 ** -float(self.decimals[col])
            return Episode(kind, col, g, end, length, round(shift / step) * step)
        prev = x[i - 1] if i > 0 else self.last_row
        return Episode(kind, col, g, end, length, float((x[i] if prev is None else prev)[col]))

    def apply(self, x: np.ndarray, g0: int) -> list[Episode | None]:
        """Modify block ``x`` (rows = readings g0, g0+1, ...) and label each row's episode."""
        n = len(x)
        starts = self.start_rng.random(n) < self.rate
        labels: list[Episode | None] = [None] * n
        for col in np.flatnonzero(self.offsets).tolist():
            x[:, col] = self._shifted(x[:, col], float(self.offsets[col]), col)
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
            elif ep.kind == "level_shift":
                if g0 + i == ep.start:  # the jump: from here to the end of the run
                    x[i:, ep.col] = self._shifted(x[i:, ep.col], ep.size, ep.col)
                    self.offsets[ep.col] += ep.size
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

    def _shifted(self, values: np.ndarray, offset: float, col: int) -> np.ndarray:
        return np.round(values + offset, self.decimals[col]) + 0.0
