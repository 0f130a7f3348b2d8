"""Throughput benchmarks: ``python -m tests.bench [--quick] [--only NAME ...]`` (``make bench``).

Prints the machine, then one markdown table: per benchmark the items, seconds, items/s,
µs per item (wall), CPU µs per item and, for whole-flow runs, the peak RSS of each flow
process. Micro-benchmarks report the median of several repeats (``time.perf_counter``, with
``time.process_time`` beside it: on a shared machine wall time swings with other load, CPU
time much less). Flow runs are single ``python -m bytewax.run`` subprocess runs timed from
start to exit, start-up included. Speed targets are judged here, never by timed assertions
in tests. Not a test module: pytest collects only its doctests.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from tests import bench_flow as bf

ROOT = bf.ROOT
NAMES = (
    "parse",
    "features",
    "anomaly",
    "state",
    "onnx",
    "inference",
    "simulator",
    "flow",
    "postgres",
    "replay",
)
TARGET_INFERENCE_US = 50.0  # features + ONNX per prediction (project target)


@dataclass(frozen=True)
class Row:
    """One line of the table. ``seconds`` is the (median) wall time for ``items`` items;
    ``cpu_seconds`` the CPU time (user + system) spent meanwhile, when known."""

    name: str
    what: str
    items: int
    seconds: float
    cpu_seconds: float | None = None
    rss: str = ""
    note: str = ""

    @property
    def per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")

    @property
    def us(self) -> float:
        return 1e6 * self.seconds / self.items if self.items else float("nan")

    @property
    def cpu_us(self) -> float:
        if self.cpu_seconds is None or not self.items:
            return float("nan")
        return 1e6 * self.cpu_seconds / self.items


class Timing(NamedTuple):
    """Median wall and CPU seconds of repeated runs."""

    wall: float
    cpu: float


@dataclass(frozen=True)
class Sizes:
    repeats: int  # cheap micro-benchmarks
    heavy_repeats: int  # per-reading Python loops (features, detector, state)
    parse: int
    features: int
    anomaly: int
    onnx_single: int
    onnx_batches: int
    sim_equipment: int
    fleet: tuple[int, int]  # (equipment, readings each) of the flow benchmark file
    replay: tuple[int, int]
    postgres: int


FULL = Sizes(5, 3, 20_000, 5_000, 5_000, 2_000, 40, 50, (100, 150), (100, 130), 20_000)
QUICK = Sizes(3, 3, 2_000, 1_000, 1_000, 300, 8, 10, (20, 150), (10, 130), 2_000)


def fmt_num(x: float) -> str:
    """Three significant digits, thousands separated.

    >>> fmt_num(652_123.4), fmt_num(12.345), fmt_num(0.01234)
    ('652,123', '12.3', '0.0123')
    """
    if x != x or x in (float("inf"), float("-inf")):
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table.

    >>> print(table([Row("parse", "parse_reading", 1000, 0.02, 0.01)]))
    | benchmark | what | items | seconds | items/s | µs/item | CPU µs/item | peak RSS MiB | note |
    |---|---|---:|---:|---:|---:|---:|---:|---|
    | parse | parse_reading | 1,000 | 0.02 | 50,000 | 20 | 10 |  |  |
    """
    out = [
        "| benchmark | what | items | seconds | items/s | µs/item | CPU µs/item | peak RSS MiB "
        "| note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cells = [r.name, r.what, f"{r.items:,}", fmt_num(r.seconds), fmt_num(r.per_s)]
        cells += [fmt_num(r.us), fmt_num(r.cpu_us), r.rss, r.note]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def median_time(
    body: Callable[[Any], object], setup: Callable[[], Any] = lambda: None, repeats: int = 5
) -> Timing:
    """Median wall (``perf_counter``) and CPU (``process_time``) seconds of
    ``body(setup())`` over ``repeats`` runs; ``setup`` is not timed."""
    walls, cpus = [], []
    for _ in range(repeats):
        ctx = setup()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        body(ctx)
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
    return Timing(statistics.median(walls), statistics.median(cpus))


# --- shared inputs ----------------------------------------------------------------------------


class Inputs:
    """Simulator readings and the model, built once and shared by the benchmarks."""

    def __init__(self, sizes: Sizes, model_dir: Path) -> None:
        self.sizes = sizes
        self.model_dir = model_dir
        self._cache: dict[str, Any] = {}
        self.notes: list[str] = []

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def readings(self, n: int) -> list[dict[str, Any]]:
        """About ``n`` turbofan readings, at most 140 per unit (shorter than any simulated
        life), so a fleet of ``n / 140`` units interleaved in event time."""
        units = max(20, -(-n // 140))
        return self.get(f"readings{n}", lambda: bf.sim_readings(units, -(-n // units)))

    def rows(self, n: int) -> Any:
        """``(n, 21)`` sensor rows in the model's sensor order (one unit after another)."""
        import numpy as np

        from connectors.simulator import simulate_units

        def make() -> Any:
            out, total = [], 0
            for _, _, x, _ in simulate_units("turbofan_engine", 1000, seed=bf.SIM_SEED):
                out.append(x)
                total += len(x)
                if total >= n:
                    break
            return np.concatenate(out)[:n]

        return self.get(f"rows{n}", make)

    def model(self) -> Any:
        from connectors.model_store import load_path

        bundle = self.get("bundle", lambda: load_path(self.model_dir))
        model = bundle.for_type("turbofan_engine")
        if model is None:
            raise SystemExit(f"no turbofan_engine model in {self.model_dir}")
        return model

    def config(self) -> Any:
        return self.model().meta.feature_config

    def features(self, n: int) -> Any:
        from models.features import history_features

        return self.get(f"features{n}", lambda: history_features(self.rows(n), self.config()))

    def flow_file(self, tmp: Path) -> tuple[Path, int]:
        def make() -> tuple[Path, int]:
            readings = bf.sim_readings(*self.sizes.fleet)
            return bf.write_jsonl(readings, tmp / "flow.jsonl"), len(readings)

        return self.get("flow_file", make)

    def flow_entry(self, tmp: Path) -> tuple[str, bf.FlowRun]:
        """Which flow to run, and its start-up run (0 readings, -w1): ``flows.main`` with
        ``PM_OUTPUT=none``, unless that does not build (no output step), then the same
        flow with a dropping output (:func:`tests.bench_flow.discard_flow`)."""

        def make() -> tuple[str, bf.FlowRun]:
            empty = bf.write_jsonl([], tmp / "empty.jsonl")
            env = bf.flow_env(self.flow_env_base() | {"PM_SOURCE": f"jsonl:{empty}"})
            run = bf.run_flow(env, [["-w1"]])
            if run.ok or "at least one output" not in run.error:
                return bf.FLOW_MAIN, run
            self.notes.append(
                "`flows.main` with PM_OUTPUT=none and no services does not build (bytewax: "
                "'Dataflow needs to contain at least one output or inspect step'); flow runs "
                f"use `{bf.DISCARD_FLOW}`, the same build_flow with an output that drops items."
            )
            return bf.DISCARD_FLOW, bf.run_flow(env, [["-w1"]], flow=bf.DISCARD_FLOW)

        return self.get("flow_entry", make)

    def flow_env_base(self) -> dict[str, str]:
        return {"PM_OUTPUT": "none", "PM_MODEL": str(self.model_dir)}


# --- micro-benchmarks -------------------------------------------------------------------------


def bench_parse(inp: Inputs) -> list[Row]:
    from models.parsing import parse_reading
    from models.schemas import Origin, Reading

    payloads = [bf.encode(r) for r in inp.readings(inp.sizes.parse)][: inp.sizes.parse]
    origin = Origin("bench")
    assert all(isinstance(parse_reading(p, origin), Reading) for p in payloads[:100])

    def body(_: Any) -> None:
        for p in payloads:
            parse_reading(p, origin)

    t = median_time(body, repeats=inp.sizes.repeats)
    return [Row("parse", "parse_reading(JSON bytes), 21 sensors", len(payloads), *t)]


def _features_stream(inp: Inputs) -> tuple[int, Timing]:
    """(readings, median seconds) of ring-buffer append + ``window_features`` per reading,
    as ``EquipmentState.ingest`` does; measured once, shared with the inference row."""
    from models.features import RingBuffer, window_features

    cfg = inp.config()
    rows = inp.rows(inp.sizes.features)

    def per_reading(_: Any) -> None:
        rb = RingBuffer(cfg.max_window, len(cfg.sensors))
        for row in rows:
            rb.append(row)
            window_features(rb.window(), cfg)

    return inp.get(
        "features_stream",
        lambda: (len(rows), median_time(per_reading, repeats=inp.sizes.heavy_repeats)),
    )


def bench_features(inp: Inputs) -> list[Row]:
    from models.features import history_features

    cfg = inp.config()
    n, t1 = _features_stream(inp)
    history = inp.rows(1000)

    def batched(_: Any) -> None:
        history_features(history, cfg)

    t2 = median_time(batched, repeats=inp.sizes.repeats)
    return [
        Row(
            "features",
            f"window_features, one (60,21) window per reading -> {len(cfg.names)}",
            n,
            *t1,
            note="ring buffer append included",
        ),
        Row(
            "features",
            "history_features, 1000 windows at once",
            len(history),
            *t2,
            note="training path (sliding_window_view)",
        ),
    ]


def _detector() -> Any:
    from connectors.settings import AnomalySettings
    from models.anomaly import AnomalyDetector

    a = AnomalySettings()  # the flow's defaults
    return AnomalyDetector(
        n_trees=a.n_trees,
        height=a.height,
        window_size=a.window_size,
        warmup=a.warmup,
        calibration_size=a.calibration_size,
        seed=a.seed,
    )


def bench_anomaly(inp: Inputs) -> list[Row]:
    n, warm = inp.sizes.anomaly, 600
    xs = [r["sensors"] for r in inp.readings(n + warm)]
    warm_xs, xs = xs[:warm], xs[warm : warm + n]

    def setup() -> Any:
        det = _detector()
        for x in warm_xs:
            det.score_learn(x)
        return det

    def body(det: Any) -> None:
        for x in xs:
            det.score_learn(x)

    t = median_time(body, setup, inp.sizes.heavy_repeats)
    what = "AnomalyDetector.score_learn, 21 sensors (after warm-up)"
    return [Row("anomaly", what, len(xs), *t)]


def bench_state(inp: Inputs) -> list[Row]:
    from connectors.settings import Settings
    from models.equipment_state import EquipmentState
    from models.parsing import parse_reading
    from models.schemas import Origin, Reading

    n = inp.sizes.anomaly
    units = -(-n // 80)  # 140 readings each (shorter than any life): 60 warm up, 80 timed
    readings = [parse_reading(r, Origin("bench")) for r in bf.sim_readings(units, 140)]
    readings_ok = [r for r in readings if isinstance(r, Reading)]
    assert len(readings_ok) == len(readings), "simulator readings must parse"
    warm, timed = readings_ok[: 60 * units], readings_ok[60 * units :][:n]
    cfg = inp.config()
    lateness_ms = round(Settings().allowed_lateness_s * 1000)

    def setup() -> dict[str, Any]:
        states: dict[str, Any] = {}
        for r in warm:
            st = states.get(r.equipment_id)
            if st is None:
                st = states[r.equipment_id] = EquipmentState(
                    cfg, _detector(), lateness_ms=lateness_ms
                )
            st.ingest(r)
        return states

    def body(states: dict[str, Any]) -> None:
        for r in timed:
            states[r.equipment_id].ingest(r)

    t = median_time(body, setup, inp.sizes.heavy_repeats)
    return [
        Row(
            "state",
            "EquipmentState.ingest (features + detector): flow CPU per reading",
            len(timed),
            *t,
            note=f"{len(warm)} warm-up readings untimed",
        )
    ]


def _onnx_rows(inp: Inputs, batch: int, n_batches: int) -> tuple[int, Timing]:
    model = inp.model()
    x = inp.features(batch * n_batches)

    def body(_: Any) -> None:
        for i in range(0, batch * n_batches, batch):
            model.predict(x[i : i + batch])

    return batch * n_batches, median_time(body, repeats=inp.sizes.repeats)


def bench_onnx(inp: Inputs) -> list[Row]:
    model = inp.model()
    n1, t1 = _onnx_rows(inp, 1, inp.sizes.onnx_single)
    nb, tb = _onnx_rows(inp, 256, inp.sizes.onnx_batches)
    what = f"RulModel.predict ({len(model.meta.feature_names)} features, rul + band)"
    return [
        Row("onnx", what + ", single row", n1, *t1, note="items are rows"),
        Row("onnx", what + ", batches of 256", nb, *tb, note="items are rows"),
    ]


def bench_inference(inp: Inputs, tmp: Path) -> list[Row]:
    """Features per reading plus ONNX per row at the batch size the flow really uses."""
    path, _ = inp.flow_file(tmp)
    sample = tmp / "batch_sample.jsonl"
    with path.open("rb") as src, sample.open("wb") as dst:
        for _, line in zip(range(5000), src, strict=False):
            dst.write(line)
    sizes = bf.flow_batch_sizes(sample, inp.model_dir)
    if not sizes:
        raise RuntimeError("the in-process flow made no predictions: is the model loadable?")
    batch = max(1, bf.item_weighted_median(sizes))
    n_feat, t_feat = _features_stream(inp)
    n_batches = max(1, inp.sizes.onnx_batches * 256 // batch)
    n, t_onnx = _onnx_rows(inp, batch, n_batches)
    f_us, o_us = 1e6 * t_feat.wall / n_feat, 1e6 * t_onnx.wall / n
    wall_us = f_us + o_us
    cpu_us = 1e6 * (t_feat.cpu / n_feat + t_onnx.cpu / n)

    def verdict(us: float) -> str:
        return "met" if us < TARGET_INFERENCE_US else "MISSED"

    note = (
        f"features {f_us:.1f} + ONNX {o_us:.1f} µs/row at batch {batch} (item-weighted median "
        f"of {len(sizes)} predict_rul batches, sizes {min(sizes)}..{max(sizes)}, in-process "
        f"-w1 run); target < {TARGET_INFERENCE_US:.0f} µs: {verdict(wall_us)} by wall time, "
        f"{verdict(cpu_us)} by CPU time"
    )
    what = "per prediction in the stream: features + ONNX"
    return [Row("inference", what, n, n * wall_us / 1e6, n * cpu_us / 1e6, note=note)]


def bench_simulator(inp: Inputs) -> list[Row]:
    from connectors.simulator import SimConfig, simulate

    cfg = SimConfig(
        num_equipment=inp.sizes.sim_equipment,
        equipment_types=("turbofan_engine",),
        readings=400,
        seed=bf.SIM_SEED,
    )
    counts: list[int] = []

    def body(_: Any) -> None:
        counts.append(sum(1 for _ in simulate(cfg)))

    t = median_time(body, repeats=max(3, inp.sizes.repeats - 2))
    return [Row("simulator", f"simulate(), {cfg.num_equipment} turbofans", counts[0], *t)]


# --- whole flow -------------------------------------------------------------------------------


def _rss(run: bf.FlowRun) -> str:
    return " + ".join(f"{m:.0f}" for m in run.peak_rss_mib)


def _flow_row(name: str, what: str, items: int, run: bf.FlowRun, startup: bf.FlowRun | None) -> Row:
    """A flow run's row: wall and CPU (all processes) with start-up included. The note
    gives CPU per process, the processing rate between the first and the last output
    (when the flow reports it), and CPU per reading beyond a start-up-only ``-w1`` run
    (counted once per process)."""
    cpu = sum(run.cpu_s)
    if not run.ok:
        print(f"\n{what} FAILED:\n{run.error}", file=sys.stderr)
        return Row(name, what + " (FAILED)", items, run.seconds, cpu, _rss(run), "see stderr")
    notes = ["CPU " + " + ".join(f"{c:.1f}" for c in run.cpu_s) + " s"]
    if run.span is not None and run.span[1] > 0 and items:
        notes.append(f"first to last output {run.span[1]:.1f} s: {items / run.span[1]:,.0f}/s")
    if startup is not None and startup.ok and items:
        startup_cpu = statistics.mean(startup.cpu_s) * len(run.cpu_s)  # per process
        cpu_us = 1e6 * (cpu - startup_cpu) / items
        notes.append(f"{cpu_us:,.0f} CPU µs/reading beyond start-up")
    return Row(name, what, items, run.seconds, cpu, _rss(run), "; ".join(notes))


def bench_flow(inp: Inputs, tmp: Path) -> list[Row]:
    path, n = inp.flow_file(tmp)
    entry, start = inp.flow_entry(tmp)
    base = inp.flow_env_base()
    jsonl = bf.flow_env(base | {"PM_SOURCE": f"jsonl:{path}"})
    eq, per = inp.sizes.fleet
    sim = bf.flow_env(
        base
        | {
            "PM_SOURCE": "simulator",
            "PM_SIMULATOR__NUM_EQUIPMENT": str(eq),
            "PM_SIMULATOR__READINGS": str(per),
            "PM_SIMULATOR__EQUIPMENT_TYPES": '["turbofan_engine"]',
            "PM_SIMULATOR__SEED": str(bf.SIM_SEED),
            "PM_SIMULATOR__HEALTHY_FRACTION": str(bf.SIM_HEALTHY),
            "PM_SIMULATOR__PARTITIONS": "2",
        }
    )
    rows = [_flow_row("flow", "start-up only: 0 readings, -w1", 0, start, None)]
    fleet = f"{eq}x{per} turbofans"
    p0, p1 = bf.free_ports(2)
    addrs = f"127.0.0.1:{p0};127.0.0.1:{p1}"
    two = [["-i", "0", "-a", addrs], ["-i", "1", "-a", addrs]]
    runs: list[tuple[str, dict[str, str], list[list[str]]]] = [
        (f"jsonl ({fleet}, 1 partition), -w1", jsonl, [["-w1"]]),
        ("jsonl (1 partition), -w2", jsonl, [["-w2"]]),
        (f"simulator source ({fleet}, 2 partitions), -w1", sim, [["-w1"]]),
        ("simulator source (2 partitions), 2 processes x 1 worker", sim, two),
    ]
    for what, env, args in runs:
        rows.append(_flow_row("flow", what, n, bf.run_flow(env, args, entry), start))
    inp.notes.append(
        "flow rows: the jsonl source has one partition, so only one worker reads it; the "
        "simulator source (same readings) has 2 partitions, one per process in the 2-process "
        "run. Each simulator partition runs the whole fleet's simulation and keeps its share "
        "(CRC32 of the equipment id), so with 2 partitions the simulation is paid twice."
    )
    return rows


def bench_replay(inp: Inputs, tmp: Path) -> list[Row]:
    eq, per = inp.sizes.replay
    readings = bf.sim_readings(eq, per)
    path = bf.write_jsonl(readings, tmp / "replay.jsonl")
    entry, start = inp.flow_entry(tmp)
    env = bf.flow_env(inp.flow_env_base() | {"PM_SOURCE": f"jsonl:{path}"})
    run = bf.run_flow(env, [["-w1"]], entry)
    what = f"C-MAPSS-size replay: {eq}x{per} turbofan readings, jsonl, -w1"
    return [_flow_row("replay", what, len(readings), run, start)]


def bench_postgres(inp: Inputs) -> list[Row]:
    url = os.environ.get("PM_TEST_DATABASE_URL")
    if not url:
        print("postgres: skipped: no database (set PM_TEST_DATABASE_URL)")
        return []
    n = inp.sizes.postgres
    secs, storage = bf.postgres_seconds(url, n)
    note = f"{storage} schema, fresh database; binary COPY + INSERT..ON CONFLICT, 1000 per flush"
    return [Row("postgres", f"PostgresWriter: {kind}", n, s, note=note) for kind, s in secs.items()]


# --- main -------------------------------------------------------------------------------------


def machine_facts() -> list[str]:
    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    facts = [
        f"cores: {os.cpu_count()} ({usable} usable) {cpu}".rstrip(),
        f"python: {platform.python_version()} ({platform.machine()}, {platform.system()})",
        "packages: "
        + ", ".join(
            f"{p} {version(p)}" for p in ("numpy", "onnxruntime", "bytewax", "river", "psycopg")
        ),
    ]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    facts.append(f"load average (1, 5, 15 min) at start: {load} — other work shares the cores")
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    facts.append(f"OPENBLAS_CORETYPE: {coretype}" if coretype else "OPENBLAS_CORETYPE: not set")
    return facts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    p.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only these (repeat or comma-separate): {', '.join(NAMES)}",
    )
    p.add_argument("--model", type=Path, default=ROOT / "artifacts" / "model")
    args = p.parse_args(argv)
    only = [n.strip() for arg in args.only or [] for n in arg.split(",") if n.strip()]
    unknown = sorted(set(only) - set(NAMES))
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(NAMES)}")
    args.only = only or list(NAMES)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.model.exists():
        print(
            f"no model at {args.model}: run `.venv/bin/python -m models.train --quick "
            f"--no-mlflow --out {args.model}` (or `make bench`)",
            file=sys.stderr,
        )
        return 2
    sizes = QUICK if args.quick else FULL
    began = time.perf_counter()
    print("## Machine")
    for fact in machine_facts():
        print(f"- {fact}")
    print(
        f"- mode: {'quick' if args.quick else 'full'}; micro-benchmarks: median of "
        f"{sizes.heavy_repeats}-{sizes.repeats} repeats; flow runs: one subprocess run each, "
        "wall time"
    )
    print(flush=True)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="pm-bench-") as tmp_name:
        tmp = Path(tmp_name)
        inp = Inputs(sizes, args.model)
        steps: dict[str, Callable[[], list[Row]]] = {
            "parse": lambda: bench_parse(inp),
            "features": lambda: bench_features(inp),
            "anomaly": lambda: bench_anomaly(inp),
            "state": lambda: bench_state(inp),
            "onnx": lambda: bench_onnx(inp),
            "inference": lambda: bench_inference(inp, tmp),
            "simulator": lambda: bench_simulator(inp),
            "flow": lambda: bench_flow(inp, tmp),
            "postgres": lambda: bench_postgres(inp),
            "replay": lambda: bench_replay(inp, tmp),
        }
        for name in NAMES:
            if name in args.only:
                t0 = time.perf_counter()
                rows += steps[name]()
                print(f"{name}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print("## Results")
    print(table(rows))
    for note in inp.notes:
        print(f"\nNote: {note}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average at end: {load}")
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(
        f"\nbenchmark process peak RSS: {self_rss:.0f} MiB (micro-benchmarks run in it); "
        f"total {time.perf_counter() - began:.0f} s"
    )
    return 0 if all("FAILED" not in r.what for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
