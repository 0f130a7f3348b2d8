"""Labelled evaluation of anomaly detection: simulated faults with known onsets, alerts as the
flow raises them, precision / recall / false alarms / detection delay.

Cases come from the built-in simulator: healthy units (so wear does not confound), one fault
kind per run (spike, drift, stuck, level_shift) injected at random onsets, ground truth from
the simulator's episodes. Every detector sees the readings through
:class:`~models.equipment_state.EquipmentState` (vibration as its 10-reading RMS, as in the
flow), and its scores go through the ``anomaly_high`` rule of :func:`alerting.rules.evaluate`
(consecutive count, hysteresis, cooldown), so one *alert* is one ``firing`` transition.

Definitions (per equipment, only after the first ``settle`` readings, when every detector is
out of warm-up):

* an alert is *true* when it fires during an episode or within ``tolerance`` readings after
  its end; precision = true alerts / alerts;
* an episode is *detected* when a true alert fires in that window; recall = detected /
  episodes; delay = readings (and event-time hours) from onset to the first such alert;
* false alarms per equipment-day = alerts that are not true / equipment-days (event time);
* alerts per detection = true alerts / detected episodes (1.0 means one incident, one alert).

``python -m models.detector_eval`` prints the table for the new detector, the previous one
(stock settings) and a null detector (uniform random scores), deterministic by ``--seed``,
then one summary table of the flow's detector and rule on three sets:

* the NAB development set (``--nab-dir``, default ``../shared/data/nab-dev`` from the
  project root when it exists; :mod:`models.nab_eval`): NAB standard / low-FP / low-FN of
  the pages (the flow's rule at its defaults, and warning-only as issue 9 measured it) and
  of the raw score at NAB's optimised threshold;
* the simulator faults above (the ``new`` row, all kinds);
* a pump whose fault only shows jointly (:func:`joint_fault_units`): pressure drifts away
  from what the flow through the pump implies, while every sensor stays in its own range.
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
import statistics
import sys
import tempfile
import time
import zlib
from array import array
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from river import anomaly, preprocessing

from alerting.rules import ANOMALY_HIGH, FIRING, RESOLVED, AlertState, Thresholds, evaluate
from connectors.sim_faults import FAULT_KINDS
from connectors.simulator import SimConfig, Truth, simulate
from models import nab_eval
from models.anomaly import AnomalyDetector
from models.equipment import EQUIPMENT_TYPES
from models.equipment_state import EquipmentState, Scored
from models.features import FeatureConfig
from models.nab_scoring import BadInput
from models.schemas import Prediction, Reading
from models.score_csv import resolve_columns, score_and_alert

ALL = "all"
STOCK_RULE = Thresholds(anomaly_warning=0.99, anomaly_critical=0.999, anomaly_min_consecutive=5)


@dataclass(frozen=True)
class EvalConfig:
    """What to simulate and how to score it. ``fault_rate`` is episode starts per reading."""

    equipment_types: tuple[str, ...] = ("turbofan_engine", "pump")
    units_per_type: int = 8
    readings: int = 2500
    kinds: tuple[str, ...] = FAULT_KINDS
    fault_rate: float = 0.006
    settle: int = 200
    tolerance: int = 10
    seed: int = 0


Scorer = Callable[[Reading, Truth], float]
ScorerFactory = Callable[[str, str], Scorer]  # (equipment_id, equipment_type) -> scorer


@dataclass(frozen=True)
class DetectorSpec:
    """One row of the table: a scorer (by name) and the alert rule applied to its scores."""

    name: str
    scorer: str
    thresholds: Thresholds = field(default_factory=Thresholds)


# --- scorers ---------------------------------------------------------------------------------


def state_scorer(make_detector: Callable[[], Any]) -> ScorerFactory:
    """Scores from a detector fed the way the flow feeds it (through EquipmentState)."""

    def factory(equipment_id: str, equipment_type: str) -> Scorer:
        et = EQUIPMENT_TYPES[equipment_type]
        cfg = FeatureConfig(et.sensors, fft_sensors=et.vibration_sensors)
        state = EquipmentState(cfg, make_detector(), lateness_ms=0, predict_every=1 << 62)

        def score(reading: Reading, truth: Truth) -> float:
            out = state.ingest(reading)
            return out.anomaly_score if isinstance(out, Scored) else math.nan

        return score

    return factory


def null_scorer(seed: int = 0) -> ScorerFactory:
    """Uniform random scores: what a detector with no information achieves."""

    def factory(equipment_id: str, equipment_type: str) -> Scorer:
        rng = random.Random(seed * 1_000_003 + zlib.crc32(equipment_id.encode()))
        return lambda reading, truth: rng.random()

    return factory


def oracle_scorer() -> ScorerFactory:
    """Scores 1 exactly on the readings ground truth labels as faulty, else 0."""
    return lambda equipment_id, equipment_type: lambda r, t: 1.0 if t.fault else 0.0


class BaselineDetector:
    """The previous detector, kept verbatim for comparison: River StandardScaler → clip →
    HalfSpaceTrees, raw score ranked among the equipment's last ``calibration_size``."""

    def __init__(
        self,
        n_trees: int = 10,
        height: int = 6,
        window_size: int = 50,
        warmup: int = 60,
        calibration_size: int = 500,
        z_clip: float = 4.0,
        seed: int = 0,
    ) -> None:
        self.warmup = warmup
        self.z_clip = z_clip
        self.calibration_size = calibration_size
        self.scaler = preprocessing.StandardScaler()
        self.trees = anomaly.HalfSpaceTrees(
            n_trees=n_trees, height=height, window_size=window_size, seed=seed
        )
        self.seen = 0
        self._recent: deque[float] = deque()
        self._sorted: list[float] = []

    def score_learn(self, x: Mapping[str, float]) -> float:
        if not x:
            return 0.0
        z = self.scaler.transform_one(x)
        self.scaler.learn_one(x)
        c, span = self.z_clip, 2.0 * self.z_clip
        u = {k: (min(max(v, -c), c) + c) / span for k, v in z.items()}
        raw = self.trees.score_one(u)
        self.trees.learn_one(u)
        self.seen += 1
        if self.seen <= self.trees.window_size:
            return 0.0
        n = len(self._sorted)
        score = bisect.bisect_left(self._sorted, raw) / n if n else 0.0
        bisect.insort(self._sorted, raw)
        self._recent.append(raw)
        if len(self._recent) > self.calibration_size:
            del self._sorted[bisect.bisect_left(self._sorted, self._recent.popleft())]
        return score if self.seen > self.warmup else 0.0


def default_scorers(seed: int = 0, oracle: bool = False) -> dict[str, ScorerFactory]:
    """The new detector, the previous one, a null detector (and optionally an oracle)."""
    scorers = {
        "new": state_scorer(lambda: AnomalyDetector(seed=seed)),
        "new-no-trees": state_scorer(lambda: AnomalyDetector(seed=seed, hst_weight=0.0)),
        "baseline": state_scorer(lambda: BaselineDetector(seed=seed)),
        "null": null_scorer(seed),
    }
    if oracle:
        scorers["oracle"] = oracle_scorer()
    return scorers


def default_specs(oracle: bool = False) -> list[DetectorSpec]:
    """Rows: new detector and null with the default rule, previous detector with its stock
    rule and with the default rule (so the rule's share of any change is visible)."""
    specs = [
        DetectorSpec("new", "new"),
        DetectorSpec("new-no-trees", "new-no-trees"),
        DetectorSpec("baseline", "baseline", STOCK_RULE),
        DetectorSpec("baseline+rule", "baseline"),
        DetectorSpec("null", "null"),
    ]
    if oracle:
        specs.append(DetectorSpec("oracle", "oracle", Thresholds(anomaly_min_consecutive=1)))
    return specs


# --- running ---------------------------------------------------------------------------------


@dataclass
class Span:
    """One labelled episode, as reading indices of its equipment (``end`` inclusive)."""

    kind: str
    sensor: str
    start: int
    end: int


@dataclass
class Incident:
    """One alert: the reading it fired at, and the one it resolved at (None if still open)."""

    fire: int
    end: int | None = None


@dataclass
class EquipmentRun:
    """One equipment's labelled stream: its episodes and each scorer's score per reading."""

    equipment_id: str
    equipment_type: str
    start_ms: int
    period_ms: int
    n: int = 0
    episodes: list[Span] = field(default_factory=list)
    scores: dict[str, array[float]] = field(default_factory=dict)

    @property
    def hours_per_reading(self) -> float:
        return self.period_ms / 3_600_000


def run_cases(
    sim: SimConfig, scorers: Mapping[str, ScorerFactory]
) -> tuple[list[EquipmentRun], dict[str, float]]:
    """Stream the simulation through every scorer, keeping each reading's score.

    Returns one run per equipment, and each scorer's cost in µs per reading."""
    runs: dict[str, EquipmentRun] = {}
    live: dict[str, list[tuple[Scorer, array[float]]]] = {}
    spent = dict.fromkeys(scorers, 0.0)
    total = 0
    for reading_dict, truth in simulate(sim):
        eq_id, eq_type = reading_dict["equipment_id"], reading_dict["equipment_type"]
        run = runs.get(eq_id)
        if run is None:
            period_ms = round(EQUIPMENT_TYPES[eq_type].hours_per_reading * 3_600_000)
            run = runs[eq_id] = EquipmentRun(eq_id, eq_type, truth.ts_ms, period_ms)
            run.scores = {name: array("d") for name in scorers}
            live[eq_id] = [(f(eq_id, eq_type), run.scores[name]) for name, f in scorers.items()]
        i = run.n
        run.n += 1
        total += 1
        if truth.fault is not None and truth.fault_start_ms == truth.ts_ms:
            assert truth.fault_sensor is not None and truth.fault_end_ms is not None
            end = i + (truth.fault_end_ms - truth.ts_ms) // run.period_ms
            run.episodes.append(Span(truth.fault, truth.fault_sensor, i, end))
        reading = Reading(eq_id, eq_type, truth.ts_ms, reading_dict["sensors"])
        for name, (scorer, out) in zip(scorers, live[eq_id], strict=True):
            t0 = time.perf_counter()
            out.append(scorer(reading, truth))
            spent[name] += time.perf_counter() - t0
    per_reading = {k: v / max(total, 1) * 1e6 for k, v in spent.items()}
    return list(runs.values()), per_reading


def alerts(run: EquipmentRun, scorer: str, thresholds: Thresholds) -> list[Incident]:
    """The ``anomaly_high`` alerts the flow's rule raises on one run's scores.

    >>> run = EquipmentRun("p", "pump", 0, 600_000, n=6)
    >>> run.scores = {"d": array("d", [0.1, 1.0, 1.0, 0.2, 0.1, 1.0])}
    >>> alerts(run, "d", Thresholds(anomaly_min_consecutive=2, cooldown_s=0))
    [Incident(fire=2, end=3)]
    """
    state = AlertState()
    out: list[Incident] = []
    for i, score in enumerate(run.scores[scorer]):
        ts = run.start_ms + i * run.period_ms
        for alert in evaluate(state, _prediction(run, ts, score), thresholds):
            if alert.rule != ANOMALY_HIGH:
                continue
            if alert.state == FIRING:
                out.append(Incident(i))
            elif alert.state == RESOLVED:
                out[-1].end = i
    return out


def _prediction(run: EquipmentRun, ts_ms: int, score: float) -> Prediction:
    return Prediction(
        run.equipment_id,
        run.equipment_type,
        ts_ms,
        None,
        "cycles",
        None,
        None,
        None,
        1.0,
        score,
        "ok",
        "eval",
        "0",
    )


# --- metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metrics:
    """Counts and delays of one detector on one set of runs (pooled, so they add up)."""

    episodes: int = 0
    detected: int = 0
    alerts: int = 0
    true_alerts: int = 0
    equipment_days: float = 0.0
    delays: tuple[int, ...] = ()
    delays_h: tuple[float, ...] = ()

    @property
    def precision(self) -> float:
        return self.true_alerts / self.alerts if self.alerts else math.nan

    @property
    def recall(self) -> float:
        return self.detected / self.episodes if self.episodes else math.nan

    @property
    def false_alarms_per_day(self) -> float:
        days = self.equipment_days
        return (self.alerts - self.true_alerts) / days if days else math.nan

    @property
    def alerts_per_detection(self) -> float:
        return self.true_alerts / self.detected if self.detected else math.nan

    def __add__(self, other: Metrics) -> Metrics:
        return Metrics(
            self.episodes + other.episodes,
            self.detected + other.detected,
            self.alerts + other.alerts,
            self.true_alerts + other.true_alerts,
            self.equipment_days + other.equipment_days,
            self.delays + other.delays,
            self.delays_h + other.delays_h,
        )


def score_run(run: EquipmentRun, incidents: list[Incident], settle: int, tolerance: int) -> Metrics:
    """Match one equipment's alerts to its episodes (see the module docstring).

    >>> run = EquipmentRun("t", "turbofan_engine", 0, 3_600_000, n=48)
    >>> run.episodes = [Span("spike", "T24", 10, 10)]
    >>> m = score_run(run, [Incident(12), Incident(30)], settle=0, tolerance=5)
    >>> m.precision, m.recall, m.delays, m.false_alarms_per_day
    (0.5, 1.0, (2,), 0.5)
    """
    episodes = [e for e in run.episodes if e.start >= settle]
    fires = [a.fire for a in incidents if a.fire >= settle]
    true = {f for f in fires for e in episodes if e.start <= f <= e.end + tolerance}
    delays = []
    for e in episodes:
        hits = [f for f in fires if e.start <= f <= e.end + tolerance]
        if hits:
            delays.append(hits[0] - e.start)
    days = max(run.n - settle, 0) * run.hours_per_reading / 24.0
    return Metrics(
        episodes=len(episodes),
        detected=len(delays),
        alerts=len(fires),
        true_alerts=len(true),
        equipment_days=days,
        delays=tuple(delays),
        delays_h=tuple(d * run.hours_per_reading for d in delays),
    )


@dataclass(frozen=True)
class Report:
    """Metrics per (fault kind or ``all``, row), each row's rule, cost per scorer."""

    metrics: dict[tuple[str, str], Metrics]
    us_per_reading: dict[str, float]
    detectors: tuple[str, ...]
    kinds: tuple[str, ...]
    rules: dict[str, Thresholds]


def score_cases(
    config: EvalConfig, scorers: Mapping[str, ScorerFactory]
) -> tuple[dict[str, list[EquipmentRun]], dict[str, float]]:
    """One simulation per fault kind, scored by every scorer; cost in µs per reading."""
    runs: dict[str, list[EquipmentRun]] = {}
    cost: dict[str, list[float]] = defaultdict(list)
    for kind in config.kinds:
        sim = SimConfig(
            num_equipment=config.units_per_type * len(config.equipment_types),
            equipment_types=config.equipment_types,
            readings=config.readings,
            seed=config.seed,
            healthy_fraction=1.0,
            faults=(kind,),
            fault_rate=config.fault_rate,
        )
        runs[kind], per_reading = run_cases(sim, scorers)
        for name, us in per_reading.items():
            cost[name].append(us)
    return runs, {k: statistics.fmean(v) for k, v in cost.items()}


def summarise(
    runs: Mapping[str, list[EquipmentRun]], specs: Sequence[DetectorSpec], config: EvalConfig
) -> dict[tuple[str, str], Metrics]:
    """Metrics per (fault kind, row) and per (``all``, row)."""
    metrics: dict[tuple[str, str], Metrics] = defaultdict(Metrics)
    for kind, kind_runs in runs.items():
        for spec in specs:
            for run in kind_runs:
                found = alerts(run, spec.scorer, spec.thresholds)
                m = score_run(run, found, config.settle, config.tolerance)
                metrics[kind, spec.name] += m
                metrics[ALL, spec.name] += m
    return dict(metrics)


def run_evaluation(
    config: EvalConfig,
    scorers: Mapping[str, ScorerFactory] | None = None,
    specs: Sequence[DetectorSpec] | None = None,
) -> Report:
    """Score every case with every scorer, raise alerts per row, and match them to truth."""
    scorers = scorers if scorers is not None else default_scorers(config.seed)
    specs = specs if specs is not None else default_specs()
    runs, cost = score_cases(config, scorers)
    metrics = summarise(runs, specs, config)
    rules = {s.name: s.thresholds for s in specs}
    return Report(metrics, cost, tuple(s.name for s in specs), (*config.kinds, ALL), rules)


def detector_cost_us(
    make: Callable[[], Any], n_sensors: int = 21, readings: int = 3000, seed: int = 0
) -> float:
    """µs per ``score_learn`` of a bare detector on ``n_sensors`` Gaussian sensors (median of
    three passes over the same readings, after a warm-up pass)."""
    rng = random.Random(seed)
    names = [f"s{i}" for i in range(n_sensors)]
    rows = [{k: rng.gauss(0.0, 1.0) for k in names} for _ in range(readings)]
    det = make()
    for x in rows:
        det.score_learn(x)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for x in rows:
            det.score_learn(x)
        times.append((time.perf_counter() - t0) / readings * 1e6)
    return statistics.median(times)


# --- a fault that only shows jointly ---------------------------------------------------------

JOINT_SENSORS = ("flow", "pressure", "current", "temperature")
JOINT_PERIOD_MS = 600_000  # a reading every 10 min


@dataclass(frozen=True)
class JointCase:
    """Pumps whose discharge pressure falls away from what their flow implies (wear, a
    leak): ``depth`` residual standard deviations, reached over ``ramp`` readings, held for
    ``duration`` readings, then repaired. Flow follows a daily load cycle, so each sensor
    moves over a wide range on its own and the fault hides inside that range."""

    units: int = 4
    readings: int = 3000
    faults_per_unit: int = 4
    depth: float = 8.0
    ramp: int = 20
    duration: tuple[int, int] = (40, 80)
    settle: int = 300
    tolerance: int = 10
    seed: int = 0


def joint_fault_units(case: JointCase) -> list[tuple[np.ndarray, list[Span]]]:
    """Per unit: readings (rows x :data:`JOINT_SENSORS`) and its labelled episodes."""
    out = []
    for unit in range(case.units):
        rng = np.random.default_rng([case.seed, unit])
        n = case.readings
        t = np.arange(n)
        slow = np.zeros(n)
        for i in range(1, n):  # slow random changes of the operating point
            slow[i] = 0.995 * slow[i - 1] + 0.005 * rng.normal()
        load = 0.55 + 0.2 * np.sin(2 * np.pi * t / 144 + rng.uniform(0, 6.3)) + 2.0 * slow
        flow_true = 100.0 * np.clip(load, 0.25, 0.85)
        offset = np.zeros(n)
        episodes: list[Span] = []
        gap = (n - case.settle) // case.faults_per_unit
        for k in range(case.faults_per_unit):
            start = case.settle + k * gap + int(rng.integers(50, max(gap - case.duration[1], 51)))
            length = int(rng.integers(case.duration[0], case.duration[1] + 1))
            end = min(start + length - 1, n - 1)
            ramp = np.minimum((np.arange(start, end + 1) - start + 1) / case.ramp, 1.0)
            offset[start : end + 1] = -case.depth * ramp
            episodes.append(Span("joint", "pressure", start, end))
        x = np.column_stack(
            [
                flow_true + rng.normal(0, 1.0, n),
                1.5 * flow_true + offset + rng.normal(0, 1.0, n),
                0.3 * flow_true + rng.normal(0, 0.5, n),
                40.0 + 0.1 * flow_true + rng.normal(0, 0.5, n),
            ]
        )
        out.append((x, episodes))
    return out


def joint_fault_metrics(
    case: JointCase, thresholds: Thresholds | None = None, likelihood: bool = False
) -> Metrics:
    """The flow's detector and rule (score_csv's code path) on :func:`joint_fault_units`."""
    th = thresholds if thresholds is not None else Thresholds()
    header = ["t", "unit", *JOINT_SENSORS]
    rows = []
    runs = {}
    for u, (x, episodes) in enumerate(joint_fault_units(case)):
        uid = f"pump-{u}"
        run = runs[uid] = EquipmentRun(uid, "pump", 0, JOINT_PERIOD_MS, n=len(x))
        run.episodes = episodes
        rows.append(
            [[str(i * JOINT_PERIOD_MS), uid, *(f"{v:.5f}" for v in r)] for i, r in enumerate(x)]
        )
    interleaved = [row for group in zip(*rows, strict=True) for row in group]
    columns = resolve_columns(header, "t", "unit", JOINT_SENSORS)
    fires: dict[str, list[Incident]] = defaultdict(list)
    index: dict[str, int] = defaultdict(int)
    for r in score_and_alert(
        iter(interleaved), columns, th, timestamp_name="t", likelihood=likelihood
    ):
        assert r.ident is not None
        i = index[r.ident]
        index[r.ident] += 1
        if r.alert.startswith(FIRING):
            fires[r.ident].append(Incident(i))
    total = Metrics()
    for uid, run in runs.items():
        total += score_run(run, fires[uid], case.settle, case.tolerance)
    return total


# --- the summary table -------------------------------------------------------------------------


def default_nab_dir() -> Path | None:
    """``../shared/data/nab-dev`` from the project root, when it is there."""
    d = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nab-dev"
    return d if (d / "labels" / "combined_windows.json").is_file() else None


WARNING_ONLY = Thresholds(anomaly_critical=1.0)  # scores never exceed 1: every page waits


def summary_table(
    nab: Sequence[tuple[str, nab_eval.NabReport]],
    labelled: Sequence[tuple[str, str, Metrics]],
) -> str:
    """One table: NAB profiles of each NAB run's pages (and of the raw signal where it
    differs from the first run's), then ``(case, rule, metrics)`` of the labelled cases."""
    head = (
        f"{'case':<24}{'signal / rule':<34}{'standard':>9}{'low-FP':>8}{'low-FN':>8}"
        f"{'pages':>7}{'precision':>10}{'recall':>7}{'FA/eq-day':>10}{'delay med h':>12}"
    )
    lines = [head, "-" * len(head)]
    rows: list[tuple[str, nab_eval.NabScore, str, int]] = []
    for i, (label, rep) in enumerate(nab):
        for res in rep.results:
            if res.signal == nab_eval.PAGES:
                rows.append((f"{label}: pages", res, str(rep.pages), rep.files))
            elif i == 0 or "likelihood" in label:  # else the same raw signal as run 0
                what = "likelihood" if "likelihood" in label else "raw score"
                rows.append((f"{what}, best threshold", res, "-", rep.files))
    for what, res, pages, files in rows:
        sc = res.scores
        lines.append(
            f"{'NAB dev (' + str(files) + ' files)':<24}{what:<34}{sc['standard']:>9.1f}"
            f"{sc['low_FP']:>8.1f}{sc['low_FN']:>8.1f}{pages:>7}"
            f"{'-':>10}{'-':>7}{'-':>10}{'-':>12}"
        )
    for case, rule, m in labelled:
        lines.append(
            f"{case:<24}{rule:<34}{'-':>9}{'-':>8}{'-':>8}{m.alerts:>7}"
            f"{_f(m.precision):>10}{_f(m.recall):>7}{_f(m.false_alarms_per_day):>10}"
            f"{_f(_median(m.delays_h), 1):>12}"
        )
    return "\n".join(lines)


# --- output ----------------------------------------------------------------------------------

_COLUMNS = (
    ("kind", "{:<12}"),
    ("detector", "{:<14}"),
    ("rule", "{:<16}"),
    ("episodes", "{:>8}"),
    ("alerts", "{:>6}"),
    ("precision", "{:>9}"),
    ("recall", "{:>6}"),
    ("FA/eq-day", "{:>9}"),
    ("delay med", "{:>9}"),
    ("delay mean", "{:>10}"),
    ("delay med h", "{:>11}"),
    ("alerts/det", "{:>10}"),
)


def _f(x: float, digits: int = 3) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def _median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else math.nan


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.fmean(xs) if xs else math.nan


def table(report: Report) -> str:
    """The report as a fixed-width text table (delays in readings unless marked h)."""
    lines = ["  ".join(fmt.format(name) for name, fmt in _COLUMNS)]
    lines.append("-" * len(lines[0]))
    for kind in report.kinds:
        for det in report.detectors:
            m = report.metrics.get((kind, det), Metrics())
            th = report.rules[det]
            cells = (
                kind,
                det,
                f"{th.anomaly_warning:g}/{th.anomaly_critical:g}/{th.anomaly_min_consecutive}",
                m.episodes,
                m.alerts,
                _f(m.precision),
                _f(m.recall),
                _f(m.false_alarms_per_day),
                _f(_median(m.delays), 1),
                _f(_mean(m.delays), 1),
                _f(_median(m.delays_h), 1),
                _f(m.alerts_per_detection, 2),
            )
            lines.append(
                "  ".join(fmt.format(c) for (_, fmt), c in zip(_COLUMNS, cells, strict=True))
            )
        lines.append("")
    lines += [
        "rule = anomaly warning / critical threshold / consecutive scores needed; delays in "
        "readings (med, mean) and event-time hours (med h);",
        "an alert is true when it fires during an episode or up to the tolerance after it; "
        "alerts/det = true alerts per detected episode.",
    ]
    cost = ", ".join(f"{k} {v:.0f}" for k, v in report.us_per_reading.items())
    lines.append(f"scoring cost, µs per reading (EquipmentState + detector): {cost}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    d = EvalConfig()
    p = argparse.ArgumentParser(
        prog="python -m models.detector_eval",
        description="Precision, recall, false alarms and delay of the anomaly alerts on "
        "simulated faults with known onsets (new detector vs previous vs null).",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--units", type=int, default=d.units_per_type, help="units per type")
    p.add_argument("--readings", type=int, default=d.readings, help="readings per unit")
    p.add_argument("--fault-rate", type=float, default=d.fault_rate)
    p.add_argument("--types", default=",".join(d.equipment_types))
    p.add_argument("--kinds", default=",".join(d.kinds), help=f"subset of {FAULT_KINDS}")
    p.add_argument("--settle", type=int, default=d.settle, help="readings ignored at start")
    p.add_argument("--tolerance", type=int, default=d.tolerance, help="readings after an end")
    p.add_argument("--oracle", action="store_true", help="add an oracle row (sanity check)")
    p.add_argument(
        "--nab-dir",
        type=Path,
        default=default_nab_dir(),
        help="NAB-format directory (default ../shared/data/nab-dev when present)",
    )
    p.add_argument("--no-nab", action="store_true", help="skip the NAB section")
    p.add_argument(
        "--nab-out", type=Path, help="keep the per-file score CSVs here (default: a temp dir)"
    )
    p.add_argument("--joint-units", type=int, default=JointCase().units, help="0: skip")
    p.add_argument(
        "--likelihood",
        action="store_true",
        help="also score NAB and the pump with the experimental likelihood step (not in the flow)",
    )
    return p


def run_nab_section(
    nab_dir: Path, out: Path | None, likelihood: bool = False
) -> list[tuple[str, nab_eval.NabReport]]:
    """NAB at the flow's rule and warning-only (and, with ``likelihood``, the flow's rule on
    the score's likelihood); score files under ``out`` (or a temp dir)."""
    runs = [
        ("flow rule (defaults)", Thresholds(), False),
        ("warning-only rule", WARNING_ONLY, False),
    ]
    if likelihood:
        runs.append(("likelihood, flow rule", Thresholds(), True))
    with tempfile.TemporaryDirectory(prefix="nab-scores-") as tmp:
        base = out if out is not None else Path(tmp)
        return [
            (label, nab_eval.run_nab(nab_dir, base / f"rule-{i}", th, lk))
            for i, (label, th, lk) in enumerate(runs)
        ]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = EvalConfig(
        equipment_types=tuple(t for t in args.types.split(",") if t),
        units_per_type=args.units,
        readings=args.readings,
        kinds=tuple(k for k in args.kinds.split(",") if k),
        fault_rate=args.fault_rate,
        settle=args.settle,
        tolerance=args.tolerance,
        seed=args.seed,
    )
    try:
        if not config.kinds:
            raise ValueError("no fault kinds given")
        if not 0 <= config.settle < config.readings or config.tolerance < 0:
            raise ValueError("need 0 <= settle < readings and tolerance >= 0")
        SimConfig(
            num_equipment=max(config.units_per_type, 0) * len(config.equipment_types),
            equipment_types=config.equipment_types,
            readings=config.readings,
            faults=config.kinds,
            fault_rate=config.fault_rate,
            seed=config.seed,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.no_nab and args.nab_dir is not None:
        try:
            nab_eval.data_files(args.nab_dir)
        except ValueError as exc:
            print(f"error: --nab-dir: {exc}", file=sys.stderr)
            return 2
    began = time.monotonic()
    scorers = default_scorers(config.seed, oracle=args.oracle)
    report = run_evaluation(config, scorers, default_specs(oracle=args.oracle))
    print(table(report))
    new = detector_cost_us(lambda: AnomalyDetector(seed=config.seed))
    old = detector_cost_us(lambda: BaselineDetector(seed=config.seed))
    print(f"bare detector, 21 sensors, µs per reading: new {new:.0f}, baseline {old:.0f}")
    nab: list[tuple[str, nab_eval.NabReport]] = []
    if not args.no_nab and args.nab_dir is not None:
        try:
            nab = run_nab_section(args.nab_dir, args.nab_out, args.likelihood)
        except (BadInput, ValueError, OSError) as exc:
            print(f"error: NAB: {exc}", file=sys.stderr)
            return 2
    labelled = [("simulator faults (all)", "flow rule (defaults)", report.metrics[ALL, "new"])]
    if args.joint_units > 0:
        case = JointCase(units=args.joint_units, seed=config.seed)
        labelled.append(("pump, joint fault", "flow rule (defaults)", joint_fault_metrics(case)))
        if args.likelihood:
            m = joint_fault_metrics(case, likelihood=True)
            labelled.append(("pump, joint fault", "likelihood, flow rule", m))
    print()
    print(summary_table(nab, labelled))
    for label, rep in nab:
        print(
            f"NAB, {label}: {rep.files} files, {rep.rows} rows, {rep.windows} windows; "
            f"score_csv path {rep.seconds:.1f} s, {rep.us_per_row:.0f} µs per reading"
        )
    if not nab:
        print("NAB: skipped (no --nab-dir, or --no-nab)")
    print(
        f"({time.monotonic() - began:.0f} s) reproduce: python -m models.detector_eval "
        f"--seed {args.seed} "
        f"--units {args.units} --readings {args.readings} --fault-rate {args.fault_rate} "
        f"--types {args.types} --kinds {args.kinds} --settle {args.settle} "
        f"--tolerance {args.tolerance}{' --oracle' if args.oracle else ''}"
        + (f" --nab-dir {args.nab_dir}" if nab else " --no-nab")
        + f" --joint-units {args.joint_units}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
