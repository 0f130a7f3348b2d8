"""Alert-fatigue figures from the ``alerts`` table, per machine and per rule.

* ``alerts``: transitions an operator is told about (``firing`` and ``escalated``;
  ``resolved`` is not counted).
* ``per_machine_day``: alerts per day of observed event time (a machine's first to last
  reading, at least one hour so a machine seen briefly does not explode the rate; per
  rule, over the whole fleet's machine-days).
* ``flaps``: ``firing`` transitions that come less than ``dwell_s`` (event time) after a
  ``resolved`` of the same machine and rule: the episode ended and began again; and
  ``flap_rate`` = flaps / episodes (``firing`` transitions).
* ``acked`` and ``ack_median_s`` / ``ack_max_s``: time to acknowledge, wall-clock
  ``acknowledged_at`` minus the alert's event time (meaningful for a live stream; a replay
  of old data shows the replay's age).

Alerts of fleet-level rules (``equipment_id`` ``fleet:<type>``) count in the per-rule
figures only.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MIN_SPAN_S = 3600.0
DEFAULT_DWELL_S = 6 * 3600.0
_NOTIFIED = ("firing", "escalated")


def duration_text(s: float | None) -> str:
    """A time to acknowledge for people.

    >>> duration_text(None), duration_text(540.0), duration_text(7200.0)
    ('-', '9 min', '2.0 h')
    """
    if s is None:
        return "-"
    return f"{s / 3600:.1f} h" if abs(s) >= 3600 else f"{s / 60:.0f} min"


@dataclass
class Figures:
    """Alert-fatigue figures of one machine or one rule."""

    key: str
    machine_days: float
    alerts: int = 0
    episodes: int = 0
    flaps: int = 0
    acked: int = 0
    ack_s: list[float] = field(default_factory=list, repr=False)

    @property
    def per_machine_day(self) -> float:
        return self.alerts / self.machine_days if self.machine_days > 0 else 0.0

    @property
    def flap_rate(self) -> float:
        return self.flaps / self.episodes if self.episodes else 0.0

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "machine_days": round(self.machine_days, 3),
            "alerts": self.alerts,
            "per_machine_day": round(self.per_machine_day, 3),
            "episodes": self.episodes,
            "flaps": self.flaps,
            "flap_rate": round(self.flap_rate, 3),
            "acked": self.acked,
            "ack_median_s": round(statistics.median(self.ack_s), 1) if self.ack_s else None,
            "ack_max_s": round(max(self.ack_s), 1) if self.ack_s else None,
        }


@dataclass(frozen=True)
class FatigueReport:
    machines: list[Figures]
    rules: list[Figures]
    dwell_s: float

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "dwell_s": self.dwell_s,
            "machines": [f.to_json_dict() for f in self.machines],
            "rules": [f.to_json_dict() for f in self.rules],
        }


def fatigue(
    alerts: Iterable[Mapping[str, Any]],
    spans: Mapping[str, tuple[str | None, float]],
    dwell_s: float = DEFAULT_DWELL_S,
) -> FatigueReport:
    """Figures from alert rows (``fleet_queries.all_alerts``: per equipment and rule in
    time order) and observed spans (``fleet_queries.observed_spans``). Machines sorted by
    alerts per machine-day, highest first; rules by alerts.

    >>> from datetime import datetime, timedelta, UTC
    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
    >>> def a(h, state): return {"equipment_id": "p1", "rule": "rul_low", "state": state,
    ...     "ts": t0 + timedelta(hours=h), "acknowledged_at": None}
    >>> rows = [a(0, "firing"), a(1, "resolved"), a(2, "firing"), a(30, "resolved"),
    ...         a(40, "firing")]
    >>> r = fatigue(rows, {"p1": ("pump", 2 * 86400.0)})
    >>> m = r.machines[0].to_json_dict()
    >>> m["alerts"], m["per_machine_day"], m["episodes"], m["flaps"]
    (3, 1.5, 3, 1)
    """
    machine_fig = {
        eq: Figures(eq, max(span_s or 0.0, MIN_SPAN_S) / 86400.0)
        for eq, (_type, span_s) in spans.items()
    }
    fleet_days = sum(f.machine_days for f in machine_fig.values())
    rule_fig: dict[str, Figures] = {}
    last: dict[tuple[str, str], Mapping[str, Any]] = {}
    for row in alerts:
        eq, rule, state = row["equipment_id"], row["rule"], row["state"]
        figs = [rule_fig.setdefault(rule, Figures(rule, fleet_days))]
        if eq in machine_fig:
            figs.append(machine_fig[eq])
        prev = last.get((eq, rule))
        last[(eq, rule)] = row
        if state not in _NOTIFIED:
            continue
        flap = (
            state == "firing"
            and prev is not None
            and prev["state"] == "resolved"
            and (row["ts"] - prev["ts"]).total_seconds() < dwell_s
        )
        acked_at = row.get("acknowledged_at")
        for f in figs:
            f.alerts += 1
            f.episodes += state == "firing"
            f.flaps += flap
            if acked_at is not None:
                f.acked += 1
                f.ack_s.append((acked_at - row["ts"]).total_seconds())
    machines = sorted(machine_fig.values(), key=lambda f: (-f.per_machine_day, f.key))
    rules = sorted(rule_fig.values(), key=lambda f: (-f.alerts, f.key))
    return FatigueReport(machines, rules, dwell_s)
