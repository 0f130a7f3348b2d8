"""Embedded outputs: the console (alerts as they happen, a fleet table at the end) and
JSON-lines files. Both take a keyed stream of ``Prediction | Alert | DeadLetter`` and write
from a single partition, so multi-worker runs still produce one table and one file set."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from models.schemas import Alert, DeadLetter, Prediction, ms_to_iso

OutItem = Prediction | Alert | DeadLetter
MAX_DEAD_LETTERS_SHOWN = 20


class _SinglePartSink(FixedPartitionedSink[OutItem, Any]):
    part = "single"

    def list_parts(self) -> list[str]:
        return [self.part]

    def part_fn(self, item_key: str) -> int:
        return 0


@dataclass
class _Row:
    equipment_type: str
    rul: float | None = None
    rul_unit: str = ""
    rul_hours: float | None = None
    health: float = 1.0
    anomaly: float = 0.0
    status: str = "ok"
    alerts: int = 0
    predictions: int = 0
    last_ts_ms: int = 0
    first_ts_ms: int | None = None


def fleet_table(rows: dict[str, _Row]) -> str:
    """The fleet at a glance, worst status first."""
    order = {"critical": 0, "warning": 1, "ok": 2}
    head = (
        f"{'equipment':<16} {'type':<16} {'last RUL':>16} {'health':>7} "
        f"{'anomaly':>8} {'status':<9} {'alerts':>6}  last reading"
    )
    lines = [head, "-" * len(head)]
    for eid, r in sorted(rows.items(), key=lambda kv: (order.get(kv[1].status, 3), kv[0])):
        rul = "-" if r.rul is None else f"{r.rul:.0f} {r.rul_unit}"
        if r.rul is not None and r.rul_unit != "hours" and r.rul_hours is not None:
            rul += f" ({r.rul_hours:.0f} h)"
        lines.append(
            f"{eid:<16} {r.equipment_type:<16} {rul:>16} {r.health:>7.2f} {r.anomaly:>8.2f} "
            f"{r.status:<9} {r.alerts:>6}  {ms_to_iso(r.last_ts_ms)}"
        )
    counts = {s: sum(r.status == s for r in rows.values()) for s in ("ok", "warning", "critical")}
    lines.append(
        f"{len(rows)} equipment: {counts['ok']} ok, {counts['warning']} warning, "
        f"{counts['critical']} critical; {sum(r.alerts for r in rows.values())} alerts raised"
    )
    return "\n".join(lines)


MAX_FATIGUE_ALERTS = 100_000  # alert transitions kept for the fatigue figures at the end


def fatigue_summary(alerts: list[Alert], rows: dict[str, _Row]) -> str:
    """The alert-fatigue figures of a run (``connectors.fleet_fatigue``, as ``pm alerts
    fatigue`` computes them from the database): per rule, and the worst machines.

    >>> a = [Alert(f"i{k}", "p1", k * 3_600_000, "rul_low", "warning", s, 1.0, 2.0, "m")
    ...      for k, s in enumerate(["firing", "resolved", "firing"])]
    >>> print(fatigue_summary(a, {"p1": _Row("pump", first_ts_ms=0, last_ts_ms=86_400_000)}))
    alert fatigue (flap: firing within 6 h of a resolve of the same machine and rule):
    rule                   alerts  per machine-day  episodes  flaps  flap rate
    rul_low                     2             2.00         2      1       0.50
    worst machines: p1 2.00/day (1 flaps)
    """
    from datetime import UTC, datetime

    from connectors.fleet_fatigue import DEFAULT_DWELL_S, fatigue

    spans = {eq: (r.equipment_type, (r.last_ts_ms - r.first_ts_ms) / 1000.0)
             for eq, r in rows.items() if r.first_ts_ms is not None}  # fmt: skip
    ordered = sorted(alerts, key=lambda a: (a.equipment_id, a.rule, a.ts_ms))
    report = fatigue(
        (
            {"equipment_id": a.equipment_id, "rule": a.rule, "state": a.state,
             "ts": datetime.fromtimestamp(a.ts_ms / 1000, UTC), "acknowledged_at": None}
            for a in ordered
        ),
        spans,
    )  # fmt: skip
    lines = [
        f"alert fatigue (flap: firing within {DEFAULT_DWELL_S / 3600:g} h of a resolve of the "
        "same machine and rule):",
        f"{'rule':<20} {'alerts':>8} {'per machine-day':>16} {'episodes':>9} {'flaps':>6} "
        f"{'flap rate':>10}",
    ]
    for f in report.rules:
        lines.append(f"{f.key:<20} {f.alerts:>8} {f.per_machine_day:>16.2f} {f.episodes:>9} "
                     f"{f.flaps:>6} {f.flap_rate:>10.2f}")  # fmt: skip
    worst = [f for f in report.machines if f.alerts][:3]
    if worst:
        lines.append("worst machines: " + ", ".join(
            f"{f.key} {f.per_machine_day:.2f}/day ({f.flaps} flaps)" for f in worst))  # fmt: skip
    return "\n".join(lines)


class _ConsolePartition(StatefulSinkPartition[OutItem, None]):
    def __init__(self, out: TextIO, err: TextIO, progress_s: float) -> None:
        self.out, self.err = out, err
        self.rows: dict[str, _Row] = {}
        self.dead = 0
        self.fleet_alerts = 0
        self.predictions = 0
        self.alerts = 0
        self.alert_log: list[Alert] = []  # for the fatigue figures (bounded)
        self.progress_s = progress_s
        self._next_progress = time.monotonic() + progress_s

    def write_batch(self, values: list[OutItem]) -> None:
        for item in values:
            if isinstance(item, Prediction):
                self._prediction(item)
            elif isinstance(item, Alert):
                self._alert(item)
            else:
                self.dead += 1
                if self.dead <= MAX_DEAD_LETTERS_SHOWN:
                    where = f"{item.origin.source}[{item.origin.partition}]@{item.origin.offset}"
                    print(f"dead letter ({where}): {item.reason}", file=self.err)
                elif self.dead == MAX_DEAD_LETTERS_SHOWN + 1:
                    print("... more dead letters (counted, not shown)", file=self.err)
        now = time.monotonic()
        if self.progress_s and now >= self._next_progress:
            self._next_progress = now + self.progress_s
            print(
                f"... {self.predictions} predictions, {self.alerts} alerts, "
                f"{self.dead} dead letters, {len(self.rows)} equipment",
                file=self.err,
                flush=True,
            )

    def _prediction(self, p: Prediction) -> None:
        self.predictions += 1
        row = self.rows.get(p.equipment_id) or _Row(p.equipment_type)
        self.rows[p.equipment_id] = row
        if p.ts_ms >= row.last_ts_ms:
            row.rul, row.rul_unit, row.rul_hours = p.rul, p.rul_unit, p.rul_hours
            row.health, row.anomaly, row.status = p.health, p.anomaly_score, p.status
            row.last_ts_ms = p.ts_ms
        if row.first_ts_ms is None or p.ts_ms < row.first_ts_ms:
            row.first_ts_ms = p.ts_ms
        row.predictions += 1

    def _alert(self, a: Alert) -> None:
        self.alerts += 1
        if len(self.alert_log) < MAX_FATIGUE_ALERTS:
            self.alert_log.append(a)
        if a.state != "resolved":
            if a.equipment_id.startswith("fleet:"):  # fleet-level (drift): not a machine
                self.fleet_alerts += 1
            else:
                self.rows.setdefault(a.equipment_id, _Row("")).alerts += 1
        print(
            f"ALERT {ms_to_iso(a.ts_ms)} [{a.severity.upper()} {a.state}] {a.message}",
            file=self.out,
            flush=True,
        )

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        print("\n" + fleet_table(self.rows), file=self.out, flush=True)
        if self.fleet_alerts:
            print(f"{self.fleet_alerts} fleet-level alerts (feature drift)", file=self.out)
        if self.alert_log:
            print("\n" + fatigue_summary(self.alert_log, self.rows), file=self.out, flush=True)
        if self.dead:
            print(f"{self.dead} dead letters", file=self.out, flush=True)


class ConsoleSink(_SinglePartSink):
    """Alerts to stdout as they happen, dead letters to stderr, the fleet table at EOF."""

    def __init__(self, progress_s: float = 5.0) -> None:
        self.progress_s = progress_s

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _ConsolePartition:
        return _ConsolePartition(sys.stdout, sys.stderr, self.progress_s)


class _DiscardPartition(StatefulSinkPartition[OutItem, None]):
    def write_batch(self, values: list[OutItem]) -> None:
        return None

    def snapshot(self) -> None:
        return None


class DiscardSink(_SinglePartSink):
    """``PM_OUTPUT=none`` with no service outputs: results are only counted in metrics."""

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _DiscardPartition:
        return _DiscardPartition()


def jsonl_paths(path: str | Path) -> dict[str, Path]:
    """Where each kind of output goes: predictions at ``path``, alerts and dead letters
    beside it.

    >>> [str(p) for p in jsonl_paths("out/run.jsonl").values()]
    ['out/run.jsonl', 'out/run.alerts.jsonl', 'out/run.dlq.jsonl']
    """
    p = Path(path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return {
        "prediction": p,
        "alert": p.with_name(f"{stem}.alerts.jsonl"),
        "dead_letter": p.with_name(f"{stem}.dlq.jsonl"),
    }


def _kind(item: OutItem) -> str:
    if isinstance(item, Prediction):
        return "prediction"
    return "alert" if isinstance(item, Alert) else "dead_letter"


class _JsonlPartition(StatefulSinkPartition[OutItem, dict[str, int]]):
    def __init__(self, paths: dict[str, Path], resume: dict[str, int] | None) -> None:
        self.files = {}
        for kind, path in paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = path.open("a+b")
            if resume is not None:  # drop what was written after the snapshot: no duplicates
                fh.truncate(resume.get(kind, 0))
            else:
                fh.truncate(0)
            fh.seek(0, 2)
            self.files[kind] = fh

    def write_batch(self, values: list[OutItem]) -> None:
        chunks: dict[str, list[bytes]] = {k: [] for k in self.files}
        for item in values:
            line = json.dumps(item.to_json_dict(), separators=(",", ":"), default=str)
            chunks[_kind(item)].append(line.encode() + b"\n")
        for kind, lines in chunks.items():
            if lines:
                self.files[kind].write(b"".join(lines))
                self.files[kind].flush()

    def snapshot(self) -> dict[str, int]:
        return {kind: fh.tell() for kind, fh in self.files.items()}

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()


class JsonlSink(_SinglePartSink):
    """Predictions, alerts and dead letters as JSON lines (see :func:`jsonl_paths`)."""

    def __init__(self, path: str | Path) -> None:
        self.paths = jsonl_paths(path)

    def build_part(self, step_id: str, for_part: str, resume_state: dict[str, int] | None):
        return _JsonlPartition(self.paths, resume_state)
