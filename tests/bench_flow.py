"""Helpers for ``tests.bench``: simulator data files, whole-flow runs as subprocesses (wall
time and peak RSS per process), the flow's typical inference batch, and the PostgreSQL writer.

Not a test module (pytest collects only ``test_*.py``); importing it does no work.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition

ROOT = Path(__file__).resolve().parents[1]
SIM_SEED = 7  # the flow's default simulator seed: the jsonl file and the simulator source agree
SIM_HEALTHY = 0.25


FLOW_MAIN = "flows.main"
DISCARD_FLOW = "tests.bench_flow:discard_flow()"


@dataclass(frozen=True)
class FlowRun:
    """One finished flow run: wall seconds from the first start to the last exit."""

    seconds: float
    peak_rss_mib: list[float]  # one per process (VmHWM)
    cpu_s: list[float]  # user + system CPU seconds, one per process
    ok: bool
    error: str = ""
    span: tuple[int, float] | None = None  # (outputs, first-to-last output s), DropSink only


def sim_readings(num_equipment: int, readings: int, seed: int = SIM_SEED) -> list[dict[str, Any]]:
    """Turbofan readings (21 sensors) of a fleet, as the wire schema, in event-time order."""
    from connectors.simulator import SimConfig, simulate

    cfg = SimConfig(
        num_equipment=num_equipment,
        equipment_types=("turbofan_engine",),
        readings=readings,
        seed=seed,
        healthy_fraction=SIM_HEALTHY,
    )
    return [r for r, _ in simulate(cfg)]


def encode(reading: Mapping[str, Any]) -> bytes:
    """A reading as one compact JSON line, as the simulator CLI writes it.

    >>> encode({"equipment_id": "p-1", "sensors": {"x": 1.0}})
    b'{"equipment_id":"p-1","sensors":{"x":1.0}}'
    """
    return json.dumps(reading, separators=(",", ":")).encode()


def write_jsonl(readings: Sequence[Mapping[str, Any]], path: Path) -> Path:
    with path.open("wb") as fh:
        for r in readings:
            fh.write(encode(r) + b"\n")
    return path


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def flow_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment for a flow subprocess: ours without any ``PM_*``/``BYTEWAX_*``
    (so a shell's database URL does not add a sink), plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PM_", "BYTEWAX_"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(overrides)
    return env


def vm_hwm_mib(pid: int) -> float | None:
    """Peak RSS (``VmHWM``) of a live process from ``/proc``; None once it has exited.

    >>> vm_hwm_mib(os.getpid()) > 0
    True
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return None


@dataclass(frozen=True)
class _Exit:
    code: int
    peak_rss_mib: float
    cpu_s: float


def _wait_all(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> list[_Exit]:
    """Wait for every process, sampling its peak RSS every few ms while it runs.

    The peak comes from ``/proc/PID/status`` (``VmHWM``), not from ``ru_maxrss``: Linux
    carries the parent's RSS at fork over into the child's ``ru_maxrss`` across ``exec``,
    so every child would report at least this (large) benchmark process. CPU seconds come
    from ``wait4``'s rusage (user + system), which is the child's own."""
    exits: dict[int, _Exit] = {}
    peak = [0.0] * len(procs)
    deadline = time.monotonic() + timeout_s
    while len(exits) < len(procs):
        for i, p in enumerate(procs):
            if i in exits:
                continue
            hwm = vm_hwm_mib(p.pid)
            if hwm is not None:
                peak[i] = max(peak[i], hwm)
            flags = 0 if time.monotonic() > deadline else os.WNOHANG
            if not flags:
                p.kill()
            pid, status, usage = os.wait4(p.pid, flags)
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                exits[i] = _Exit(p.returncode, peak[i], usage.ru_utime + usage.ru_stime)
        time.sleep(0.005)
    return [exits[i] for i in range(len(procs))]


def run_flow(
    env: Mapping[str, str],
    args_per_process: Sequence[Sequence[str]],
    flow: str = FLOW_MAIN,
    timeout_s: float = 120.0,
) -> FlowRun:
    """Start ``python -m bytewax.run FLOW ARGS`` once per entry of ``args_per_process``
    (all together) and wait for all of them."""
    with ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile()) for _ in args_per_process]
        began = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bytewax.run", flow, *args],
                cwd=ROOT,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            for args, log in zip(args_per_process, logs, strict=True)
        ]
        results = _wait_all(procs, timeout_s)
        seconds = time.perf_counter() - began
        codes = [e.code for e in results]
        texts = []
        for log in logs:
            log.seek(0)
            texts.append(log.read().decode(errors="replace"))
    tails = [f"exit {rc}: {text[-1500:]}" for rc, text in zip(codes, texts, strict=True) if rc]
    return FlowRun(
        seconds,
        [e.peak_rss_mib for e in results],
        [e.cpu_s for e in results],
        not any(codes),
        "\n".join(tails),
        output_span("\n".join(texts)),
    )


SPAN_TAG = "pm-bench-span"


class _Drop(StatelessSinkPartition[Any]):
    """Counts and drops; on close prints when its first and last items arrived."""

    def __init__(self, worker: int, report: bool) -> None:
        self.worker = worker
        self.report = report
        self.items = 0
        self.first = self.last = 0.0

    def write_batch(self, items: list[Any]) -> None:
        now = time.time()
        if not self.items:
            self.first = now
        self.items += len(items)
        self.last = now

    def close(self) -> None:
        if self.report and self.items:
            line = f"{SPAN_TAG} {self.worker} {self.items} {self.first:.6f} {self.last:.6f}"
            print(line, file=sys.stderr, flush=True)


class DropSink(DynamicSink[Any]):
    """An output that drops everything, on whichever worker holds the item (no exchange).
    With ``report``, each worker prints its output span to stderr at the end."""

    def __init__(self, report: bool = False) -> None:
        self.report = report

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Drop:
        return _Drop(worker_index, self.report)


def output_span(log: str) -> tuple[int, float] | None:
    """(items, seconds from the first to the last output) over every worker's
    :class:`DropSink` report in a flow's log; None without reports.

    >>> output_span("pm-bench-span 0 10 100.0 101.5\\npm-bench-span 1 5 100.5 102.0\\n")
    (15, 2.0)
    """
    spans = [line.split()[2:] for line in log.splitlines() if line.startswith(SPAN_TAG + " ")]
    if not spans:
        return None
    items = sum(int(n) for n, _, _ in spans)
    return items, max(float(b) for _, _, b in spans) - min(float(a) for _, a, _ in spans)


def discard_flow() -> Any:
    """``flows.main`` with :class:`DropSink` as the embedded output: what ``PM_OUTPUT=none``
    would run if ``build_flow`` still built a flow without any output step."""
    import logging

    from connectors.settings import load_settings
    from flows.pipeline import build_flow

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return build_flow(load_settings(), output=DropSink(report=True))


@contextmanager
def clean_pm_env() -> Iterator[None]:
    """Hide ``PM_*`` variables from settings built in this process, then restore them."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("PM_")}
    for k in saved:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(saved)


def flow_batch_sizes(jsonl: Path, model_dir: Path) -> list[int]:
    """Sizes of the batches the flow's ``predict_rul`` step receives, from an in-process
    ``run_main`` (1 worker) over ``jsonl`` with the real step code (only wrapped to count)."""
    from bytewax.testing import run_main

    import flows.pipeline as pipeline
    from connectors.settings import load_settings

    sizes: list[int] = []
    original = pipeline.predict_items

    def counting(runtime: Any, items: list[Any]) -> Any:
        sizes.append(len(items))
        return original(runtime, items)

    pipeline.predict_items = counting
    try:
        with clean_pm_env():
            settings = load_settings(source=f"jsonl:{jsonl}", output="none", model=str(model_dir))
            run_main(pipeline.build_flow(settings, output=DropSink()))
    finally:
        pipeline.predict_items = original
    return sizes


def item_weighted_median(sizes: Sequence[int]) -> int:
    """The batch size the median *item* travels in (a few big batches outweigh many tiny
    ones, as they carry most items).

    >>> item_weighted_median([1, 1, 1, 500])
    500
    >>> item_weighted_median([])
    0
    """
    total = sum(sizes)
    seen = 0
    for s in sorted(sizes):
        seen += s
        if 2 * seen >= total:
            return s
    return 0


def postgres_seconds(
    admin_url: str, n: int, buffer_size: int = 1000
) -> tuple[dict[str, float], str]:
    """Seconds to write ``n`` readings, then ``n`` predictions, with :class:`PostgresWriter`
    (flushing every ``buffer_size`` items, as the flow's sink does) into a fresh database
    that is created, migrated and dropped here. Also returns the storage path
    (``timescaledb`` or ``plain``) the migrations chose."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    from connectors.migrate import apply_migrations, storage_path
    from connectors.postgres_sink import PostgresWriter
    from models.parsing import parse_reading
    from models.schemas import Origin, Reading

    name = f"pm_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = make_conninfo(admin_url, dbname=name)
        apply_migrations(dsn)
        raw = sim_readings(max(1, n // 200) + 1, 200)[:n]
        readings = [parse_reading(r, Origin("bench")) for r in raw]
        assert all(isinstance(r, Reading) for r in readings)
        preds = [_prediction(r, i) for i, r in enumerate(readings)]
        out: dict[str, float] = {}
        for kind, items in (("readings", readings), ("predictions", preds)):
            writer = PostgresWriter(dsn, buffer_size=buffer_size, write_interval_s=3600.0)
            add = writer.add_readings if kind == "readings" else writer.add_predictions
            began = time.perf_counter()
            for i in range(0, len(items), buffer_size):
                add(items[i : i + buffer_size])  # type: ignore[arg-type]
                writer.maybe_flush(time.monotonic())
            writer.close()
            out[kind] = time.perf_counter() - began
            table = "sensor_readings" if kind == "readings" else "predictions"
            with psycopg.connect(dsn) as conn:
                row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
                stored = row.fetchone()
            if stored is None or stored[0] != len(items):
                raise RuntimeError(f"{table}: stored {stored}, expected {len(items)}")
        return out, storage_path(dsn)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _prediction(r: Any, i: int) -> Any:
    from models.schemas import Prediction

    rul = 100.0 - i % 100
    return Prediction(
        equipment_id=r.equipment_id,
        equipment_type=r.equipment_type,
        ts_ms=r.ts_ms,
        rul=rul,
        rul_unit="cycles",
        rul_hours=rul,
        rul_lower=rul - 20.0,
        rul_upper=rul + 20.0,
        health=0.9,
        anomaly_score=0.5,
        status="ok",
        model_name="bench",
        model_version="v1",
        top_sensors=("T24", "T30"),
    )
