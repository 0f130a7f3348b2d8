"""Per-equipment physics for the built-in simulator: wear curves, sensor baselines, noise.

Everything here is pure and vectorised over one unit's life: a *life* (drawn once per unit)
fixes the unit's failure cycle, wear curve and manufacturing offsets, and
:meth:`EquipmentModel.generate` turns a block of cycle numbers plus standard-normal noise into
settings and sensor arrays. The caller owns the random generators, so a life can be generated
in one block or in chunks with identical results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.equipment import EQUIPMENT_TYPES

HEALTHY_LIFE_FACTOR = 50
"""A healthy unit's true life is this many times a normal life, so it never nears failure."""


def wear(t: np.ndarray, w0: float, k: float, life: float) -> np.ndarray:
    """Wear at cycle numbers ``t`` (1-based): ``w0`` at ``t=0``, exponential, exactly 1 at ``life``.

    >>> wear(np.array([0.0, 100.0]), w0=0.1, k=4.0, life=100).round(6).tolist()
    [0.1, 1.0]
    """
    ramp: np.ndarray = np.expm1(k * np.asarray(t, dtype=float) / life) / np.expm1(k)
    return w0 + (1.0 - w0) * ramp


def quantize(x: np.ndarray, decimals: np.ndarray) -> np.ndarray:
    """Round each column of ``x`` to its instrument resolution (``decimals`` per column).

    >>> quantize(np.array([[1.234, 5.678]]), np.array([1, 0])).tolist()
    [[1.2, 6.0]]
    """
    scale = 10.0**decimals
    return np.round(x * scale) / scale + 0.0  # + 0.0 turns -0.0 into 0.0


@dataclass(frozen=True)
class Life:
    """One unit's draw: true failure cycle, wear curve and per-unit sensor variation."""

    failure_cycle: int  # wear reaches 1 here; RUL = failure_cycle - t
    nominal_cycles: (
        int  # readings emitted when the run has no limit (= failure_cycle unless healthy)
    )
    w0: float
    k: float
    healthy: bool
    offset: np.ndarray  # (S,) manufacturing offsets
    delta: np.ndarray  # (S,) change from wear 0 to wear 1 for this unit
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EquipmentModel:
    """Sensors move linearly with wear: ``base + offset + delta * w + noise``, then quantised."""

    name: str
    sensors: tuple[str, ...]
    settings: tuple[str, ...]
    rul_unit: str
    period_s: float
    hours_per_reading: float
    life_range: tuple[int, int]
    base: np.ndarray
    delta: np.ndarray
    noise_sd: np.ndarray
    unit_sd: np.ndarray
    delta_sd: np.ndarray
    decimals: np.ndarray

    @property
    def fault_scale(self) -> np.ndarray:
        """One 'sigma' per sensor for fault injection (0 for sensors that never vary)."""
        scale = np.maximum(self.noise_sd, 10.0**-self.decimals)
        return np.where(self.noise_sd > 0, scale, 0.0)

    def rul_per_cycle(self) -> float:
        """RUL units per reading (1 for cycles, hours per reading for hours)."""
        return 1.0 if self.rul_unit == "cycles" else self.hours_per_reading

    def draw_life(self, rng: np.random.Generator, healthy: bool) -> Life:
        """Draw one unit. The same numbers are drawn whether healthy or not."""
        lo, hi = self.life_range
        cycles = int(rng.integers(lo, hi + 1))
        w0 = float(rng.uniform(0.0, 0.15))
        k = float(rng.uniform(3.0, 6.0))
        offset = rng.standard_normal(len(self.sensors)) * self.unit_sd
        delta = self.delta + rng.standard_normal(len(self.sensors)) * self.delta_sd
        extra = self._draw_extra(rng)
        if healthy:
            return Life(cycles * HEALTHY_LIFE_FACTOR, cycles, 0.0, k, True, offset, delta, extra)
        return Life(cycles, cycles, w0, k, False, offset, delta, extra)

    def _draw_extra(self, rng: np.random.Generator) -> dict[str, float]:
        return {}

    def generate(
        self, life: Life, t: np.ndarray, z: np.ndarray, z_settings: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Readings at cycles ``t`` (n,) from noise ``z`` (n, S), ``z_settings`` (n, Ns).

        Returns ``(settings (n, Ns), sensors (n, S), wear (n,))``.
        """
        w = wear(t, life.w0, life.k, life.failure_cycle)
        x = self.base + life.offset + life.delta * w[:, None] + z * self.noise_sd
        x = self._add_signals(life, t, w, x)
        return self._settings(life, z_settings), quantize(x, self.decimals), w

    def _add_signals(self, life: Life, t: np.ndarray, w: np.ndarray, x: np.ndarray) -> np.ndarray:
        return x

    def _settings(self, life: Life, z: np.ndarray) -> np.ndarray:
        return z


def _arr(*values: float) -> np.ndarray:
    return np.array(values, dtype=float)


# --- turbofan_engine ------------------------------------------------------------------------
# FD001 operating settings: N(0, 0.0022), N(0, 0.0003), 100 (single operating condition).
_TURBOFAN_SETTING_SD = _arr(0.0022, 0.0003, 0.0)
_TURBOFAN_SETTING_BASE = _arr(0.0, 0.0, 100.0)


@dataclass(frozen=True)
class _Turbofan(EquipmentModel):
    def _settings(self, life: Life, z: np.ndarray) -> np.ndarray:
        s: np.ndarray = _TURBOFAN_SETTING_BASE + z * _TURBOFAN_SETTING_SD
        return quantize(s, np.full(s.shape[-1], 4))


# Derived once from /work/shared/data/cmapss/train_FD001.txt (100 units), then hard-coded:
#   noise    = std of first differences over each unit's first half / sqrt(2), pooled;
#   unit_sd  = std across units of the first-20-cycle means, minus the noise part;
#   FD001 change = mean over units of (last-10-cycle mean - first-20-cycle mean), and its
#              spread across units (minus the noise part) gives the per-unit delta spread;
#   delta    = FD001 change / (w_late - w_early) and base = first-20 mean - delta * w_early,
#              where w_early = 0.0779 and w_late = 0.9215 are the mean wear over the first 20
#              and last 10 cycles under this simulator's priors (Monte Carlo, 20k units), so
#              simulated first-20/last-10 means match FD001. Sensors constant in FD001 stay so.
#   decimals = the resolution printed in FD001. Nc and NRc move either way in FD001 (their
#              delta spread exceeds the mean), and so they do here.
# fmt: off
TURBOFAN = _Turbofan(
    name="turbofan_engine",
    sensors=EQUIPMENT_TYPES["turbofan_engine"].sensors,
    settings=EQUIPMENT_TYPES["turbofan_engine"].settings,
    rul_unit="cycles",
    period_s=3600.0,
    hours_per_reading=1.0,
    life_range=(130, 360),
    base=_arr(
        518.67, 642.268, 1585.49, 1400.48, 14.62, 21.6095, 554.165, 2388.04, 9052.36, 1.3,
        47.2835, 522.093, 2388.04, 8134.81, 8.40935, 0.03, 391.911, 2388.0, 100.0, 38.9754,
        23.3856,
    ),
    delta=_arr(
        0.0, 1.44186, 17.3033, 29.2017, 0.0, 0.000574888, -2.75377, 0.191687, 46.8525, 0.0,
        0.885096, -2.34728, 0.196772, 32.9372, 0.114752, 0.0, 4.48235, 0.0, 0.0, -0.547346,
        -0.327633,
    ),
    noise_sd=_arr(
        0.0, 0.299932, 4.0111, 4.01176, 0.0, 0.00176516, 0.409928, 0.0299986, 4.18973, 0.0,
        0.100639, 0.298054, 0.0301382, 3.10741, 0.0202204, 0.0, 0.944603, 0.0, 0.0, 0.10123,
        0.0607823,
    ),
    unit_sd=_arr(
        0.0, 0.233025, 2.28627, 4.38726, 0.0, 0.000682998, 0.472611, 0.0457398, 7.23033, 0.0,
        0.147056, 0.406954, 0.0461884, 7.23411, 0.0170303, 0.0, 0.674352, 0.0, 0.0, 0.0837919,
        0.0501349,
    ),
    delta_sd=_arr(
        0.0, 0.262142, 3.0244, 4.66684, 0.0, 0.000466527, 0.553376, 0.0750222, 59.0346, 0.0,
        0.164236, 0.509312, 0.0755936, 53.2313, 0.0180099, 0.0, 0.755312, 0.0, 0.0, 0.0905086,
        0.0521857,
    ),
    decimals=np.array([2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 4, 2, 0, 0, 2, 2, 4]),
)
# fmt: on


# --- pump -----------------------------------------------------------------------------------
# A centrifugal pump with a rolling-element bearing (made-up but plausible magnitudes).
# The vibration column is one raw sample per reading: a shaft tone at 0.05 cycles/reading, white
# noise, and a bearing-fault tone at 0.23 cycles/reading with amplitude FAULT_AMP * w**2, so a
# 60-reading rFFT shows the fault long before the RMS rises much.
SHAFT_FREQ = 0.05
FAULT_FREQ = 0.23
SHAFT_AMP = 1.0
FAULT_AMP = 1.2
VIBRATION_NOISE_SD = 0.25
PUMP_READING_S = 600.0


@dataclass(frozen=True)
class _Pump(EquipmentModel):
    @property
    def fault_scale(self) -> np.ndarray:
        scale = super().fault_scale.copy()
        scale[-1] = np.sqrt(SHAFT_AMP**2 / 2 + VIBRATION_NOISE_SD**2)  # healthy vibration RMS
        return scale

    def _draw_extra(self, rng: np.random.Generator) -> dict[str, float]:
        return {
            "speed_rpm": float(rng.integers(1470, 1491)),
            "shaft_amp": SHAFT_AMP * float(rng.uniform(0.9, 1.1)),
            "shaft_phase": float(rng.uniform(0.0, 2 * np.pi)),
            "fault_phase": float(rng.uniform(0.0, 2 * np.pi)),
        }

    def _add_signals(self, life: Life, t: np.ndarray, w: np.ndarray, x: np.ndarray) -> np.ndarray:
        e = life.extra
        shaft = e["shaft_amp"] * np.sin(2 * np.pi * SHAFT_FREQ * t + e["shaft_phase"])
        fault = FAULT_AMP * w * w * np.sin(2 * np.pi * FAULT_FREQ * t + e["fault_phase"])
        x[:, -1] += shaft + fault
        return x

    def _settings(self, life: Life, z: np.ndarray) -> np.ndarray:
        return np.full((len(z), 1), life.extra["speed_rpm"])


PUMP = _Pump(
    name="pump",
    sensors=EQUIPMENT_TYPES["pump"].sensors,
    settings=EQUIPMENT_TYPES["pump"].settings,
    rul_unit="hours",
    period_s=PUMP_READING_S,
    hours_per_reading=PUMP_READING_S / 3600.0,
    life_range=(600, 1500),
    base=_arr(120.0, 1.5, 6.8, 38.0, 52.0, 0.0),
    delta=_arr(-8.0, 0.0, -0.25, 2.5, 22.0, 0.0),
    noise_sd=_arr(1.2, 0.03, 0.05, 0.3, 0.4, VIBRATION_NOISE_SD),
    unit_sd=_arr(3.0, 0.1, 0.15, 1.0, 2.0, 0.0),
    delta_sd=_arr(1.0, 0.0, 0.05, 0.4, 3.0, 0.0),
    decimals=np.array([2, 3, 3, 2, 2, 4]),
)

MODELS: dict[str, EquipmentModel] = {m.name: m for m in (TURBOFAN, PUMP)}
