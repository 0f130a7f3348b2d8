"""One machine's trajectory as a PNG: RUL with its band and thresholds, health with its
thresholds, and the alert moments (matplotlib's Agg renderer, no display needed)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from connectors.settings import AlertSettings
from models.logsafe import safe_for_log

_STATE_STYLE = {
    # state -> (colour, line style)
    "firing": ("#d62728", "-"),
    "escalated": ("#8b0000", "-"),
    "resolved": ("#2ca02c", ":"),
}


def _num(x: Any) -> float:
    return float(x) if x is not None and math.isfinite(float(x)) else math.nan


def trajectory_png(
    equipment_id: str,
    history: Sequence[Mapping[str, Any]],
    alerts: Sequence[Mapping[str, Any]],
    thresholds: AlertSettings,
    dpi: int = 100,
) -> bytes:
    """PNG bytes of the plot. ``history``: prediction rows oldest first (``ts``,
    ``rul_hours``, ``rul_lower_hours``, ``rul_upper_hours``, ``health``); ``alerts``: alert
    rows (``ts``, ``rule``, ``state``, ``severity``)."""
    fig = Figure(figsize=(10, 6), dpi=dpi, layout="constrained")
    ax_rul, ax_health = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    ts = [r["ts"] for r in history]
    rul = [_num(r["rul_hours"]) for r in history]
    lo = [_num(r["rul_lower_hours"]) for r in history]
    hi = [_num(r["rul_upper_hours"]) for r in history]
    health = [_num(r["health"]) for r in history]

    ax_rul.set_title(f"{safe_for_log(equipment_id, 80)}: RUL and health ({len(ts)} predictions)")
    if any(not math.isnan(x) for x in lo + hi):
        ax_rul.fill_between(ts, lo, hi, color="#1f77b4", alpha=0.2, label="RUL band")
    ax_rul.plot(ts, rul, color="#1f77b4", lw=1.5, label="RUL (h)")
    ax_rul.axhline(thresholds.rul_warning_hours, color="#ff7f0e", ls="--", lw=1,
                   label=f"warning {thresholds.rul_warning_hours:g} h")  # fmt: skip
    ax_rul.axhline(thresholds.rul_critical_hours, color="#d62728", ls="--", lw=1,
                   label=f"critical {thresholds.rul_critical_hours:g} h")  # fmt: skip
    ax_rul.set_ylabel("RUL (hours)")
    ax_rul.set_ylim(bottom=0)

    ax_health.plot(ts, health, color="#9467bd", lw=1.5, label="health")
    ax_health.axhline(thresholds.health_warning, color="#ff7f0e", ls="--", lw=1,
                      label=f"warning {thresholds.health_warning:g}")  # fmt: skip
    ax_health.axhline(thresholds.health_critical, color="#d62728", ls="--", lw=1,
                      label=f"critical {thresholds.health_critical:g}")  # fmt: skip
    ax_health.set_ylabel("health")
    ax_health.set_ylim(0, 1.05)
    ax_health.set_xlabel("event time (UTC)")

    seen: set[str] = set()
    for a in alerts:
        colour, style = _STATE_STYLE.get(a["state"], ("#7f7f7f", "-."))
        label = None if a["state"] in seen else f"alert {a['state']}"
        seen.add(a["state"])
        for ax in (ax_rul, ax_health):
            ax.axvline(a["ts"], color=colour, ls=style, lw=1, alpha=0.8, label=label)
            label = None
    if not ts:
        ax_rul.text(0.5, 0.5, "no predictions", transform=ax_rul.transAxes, ha="center")
    for ax in (ax_rul, ax_health):
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
