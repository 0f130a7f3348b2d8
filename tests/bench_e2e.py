"""The product's end-to-end benchmark (``make bench``): Kafka in → the real flow →
PostgreSQL + Kafka out, measured in one run beside a bare Bytewax flow over the same topic.

Prints a table and writes ``bench.json`` in the project root. Measured, in this order:

* **product**: the fleet (default 1,000 turbofans × 200 readings, 21 sensors, 4 partitions,
  pre-produced) through ``python -m bytewax.run flows.main`` with PostgreSQL and Kafka
  outputs, one prediction per reading, with 1 and 2 processes. Rate = readings / the span
  from the first to the last prediction message on the output topic (start-up excluded).
  Every count is checked: all predictions on the topic and all rows in PostgreSQL.
* **baseline**: Kafka source → ``json.loads`` → ``key_on`` equipment → trivial
  ``stateful_map`` → Kafka sink, over the same topic (same rate definition).
* **flow only**: the flow with every output off, 1 and 2 processes, for process scaling;
  rate = readings / (wall time − the start-up time of the same run over an empty topic).
* **CPU per reading**: user + system CPU of all flow processes, less their start-up CPU,
  per reading.
* **memory per machine**: peak RSS of the flow-only run at 1,000 and at 10,000 machines
  (``--mem-readings`` each, enough to fill the windows); growth per added machine. And
  the recovery snapshot bytes per machine of the 10,000-machine run.
* **latency**: readings produced live at half the 1-process product rate, stamped with the
  wall clock; reading to published prediction (the output message's timestamp), p50/p99.

Speed targets are judged here, never in tests. ``--quick`` runs a small fleet (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests import bench_flow as bf

ROOT = bf.ROOT
BASELINE_FLOW = "tests.bench_e2e:baseline_flow()"


@dataclass(frozen=True)
class Sizes:
    machines: int = 1000
    readings: int = 200
    mem_machines: tuple[int, int] = (1000, 10_000)
    mem_readings: int = 70
    latency_s: float = 30.0
    partitions: int = 4


FULL = Sizes()
QUICK = Sizes(machines=100, readings=100, mem_machines=(100, 1000), mem_readings=62, latency_s=8.0)


# --- the bare Bytewax flow ---------------------------------------------------------------


def baseline_flow() -> Any:
    """Kafka → json.loads → key_on → stateful_map → Kafka (topics from BENCH_* vars)."""
    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSinkMessage
    from bytewax.connectors.kafka import operators as kop
    from bytewax.dataflow import Dataflow

    brokers = os.environ["BENCH_BROKERS"].split(",")
    flow = Dataflow("bare_baseline")
    src = kop.input("in", flow, brokers=brokers, topics=[os.environ["BENCH_IN"]], tail=False)
    docs = op.map("parse", src.oks, lambda m: json.loads(m.value))
    keyed = op.key_on("key", docs, lambda d: d["equipment_id"])

    def count(state: int | None, doc: Any) -> tuple[int, int]:
        n = (state or 0) + 1
        return n, n

    counted = op.stateful_map("count", keyed, count)
    out = op.map("msg", counted, lambda kv: KafkaSinkMessage(kv[0].encode(), b"%d" % kv[1]))
    kop.output("out", out, brokers=brokers, topic=os.environ["BENCH_OUT"])
    return flow


# --- Kafka helpers -----------------------------------------------------------------------


def _admin(brokers: str) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": brokers})


def create_topic(brokers: str, name: str, partitions: int) -> str:
    from confluent_kafka.admin import NewTopic

    admin = _admin(brokers)  # keep the client alive until the futures resolve
    for f in admin.create_topics([NewTopic(name, num_partitions=partitions)]).values():
        f.result(30)
    return name


def delete_topics(brokers: str, names: Sequence[str]) -> None:
    if names:
        _admin(brokers).delete_topics(list(names))


def produce_fleet(brokers: str, topic: str, machines: int, readings: int) -> int:
    """The simulated fleet, keyed by equipment id; returns the count."""
    from confluent_kafka import Producer

    p = Producer(
        {
            "bootstrap.servers": brokers,
            "linger.ms": "20",
            "compression.type": "lz4",
            "queue.buffering.max.messages": "500000",
        }
    )
    n = 0
    for r in bf.sim_readings(machines, readings):
        while True:
            try:
                p.produce(topic, bf.encode(r), key=r["equipment_id"].encode())
                break
            except BufferError:
                p.poll(0.05)
        n += 1
        if n % 10_000 == 0:
            p.poll(0)
    assert p.flush(120) == 0
    return n


def topic_messages(brokers: str, topic: str) -> list[Any]:
    from tests.flow_process import consume_all

    return consume_all(brokers, topic, timeout_s=300)


def output_span(messages: Sequence[Any]) -> float:
    ts = [m.timestamp()[1] for m in messages]
    return (max(ts) - min(ts)) / 1000.0 if len(ts) > 1 else float("nan")


# --- runs --------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    processes: int
    readings: int
    seconds: float  # the measured span
    cpu_us: float  # per reading, start-up CPU excluded
    peak_rss_mib: float  # the largest process
    note: str = ""

    @property
    def rate(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else float("nan")


def process_args(n: int) -> list[list[str]]:
    if n == 1:
        return [[]]
    ports = bf.free_ports(n)
    addrs = ";".join(f"127.0.0.1:{p}" for p in ports)
    return [["-i", str(i), "-a", addrs] for i in range(n)]


def flow_settings(
    brokers: str, model: Path, topics: dict[str, str], database_url: str | None, kafka_out: bool
) -> dict[str, str]:
    env = {
        "PM_SOURCE": "kafka",
        "PM_OUTPUT": "none",
        "PM_MODEL": str(model),
        "PM_KAFKA_BROKERS": brokers,
        "PM_KAFKA__INPUT_TOPIC": topics["raw"],
        "PM_KAFKA__PREDICTIONS_TOPIC": topics["predictions"],
        "PM_KAFKA__ALERTS_TOPIC": topics["alerts"],
        "PM_KAFKA__DLQ_TOPIC": topics["dlq"],
        "PM_KAFKA__TAIL": "false",
        "PM_KAFKA__OUTPUT_ENABLED": "true" if kafka_out else "false",
        # a week of simulated hours lies ahead of the wall clock in a bench fleet? no:
        # the simulator starts 2026-01-01; no clock bound is hit
    }
    if database_url:
        env["PM_DATABASE_URL"] = database_url
    return env


def fresh_database(admin_url: str) -> tuple[str, str]:
    import psycopg

    name = f"pm_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def count_rows(dsn: str, table: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


class Bench:
    def __init__(self, brokers: str, admin_url: str, model: Path, sizes: Sizes) -> None:
        self.brokers, self.admin_url, self.model, self.sizes = brokers, admin_url, model, sizes
        self.run_id = uuid.uuid4().hex[:6]
        self.topics: list[str] = []
        self.startup: dict[tuple[str, int], bf.FlowRun] = {}
        self.results: list[Result] = []
        self.notes: list[str] = []

    def topic(self, what: str, partitions: int = 4) -> str:
        name = create_topic(
            self.brokers, f"bench-{what}-{self.run_id}-{len(self.topics)}", partitions
        )
        self.topics.append(name)
        return name

    def out_topics(self, raw: str) -> dict[str, str]:
        return {
            "raw": raw,
            "predictions": self.topic("pred"),
            "alerts": self.topic("alerts", 1),
            "dlq": self.topic("dlq", 1),
        }

    def empty_run(self, kind: str, procs: int) -> bf.FlowRun:
        """Start-up cost: the same flow over an empty topic."""
        key = (kind, procs)
        if key not in self.startup:
            raw = self.topic("empty", self.sizes.partitions)
            if kind == "baseline":
                env = {
                    "BENCH_BROKERS": self.brokers,
                    "BENCH_IN": raw,
                    "BENCH_OUT": self.topic("bout"),
                }
                run = bf.run_flow(bf.flow_env(env), process_args(procs), BASELINE_FLOW)
            else:
                env = flow_settings(self.brokers, self.model, self.out_topics(raw), None, False)
                run = bf.run_flow(bf.flow_env(env), process_args(procs), timeout_s=300)
            assert run.ok, run.error
            self.startup[key] = run
        return self.startup[key]

    def _result(
        self,
        name: str,
        procs: int,
        n: int,
        span: float,
        run: bf.FlowRun,
        startup: bf.FlowRun,
        note: str = "",
    ) -> Result:
        cpu = max(0.0, sum(run.cpu_s) - sum(startup.cpu_s)) / n * 1e6
        r = Result(name, procs, n, span, cpu, max(run.peak_rss_mib), note)
        self.results.append(r)
        print(
            f"  {name} ({procs} proc): {r.rate:,.0f} readings/s, {cpu:.0f} µs CPU/reading, "
            f"peak RSS {r.peak_rss_mib:.0f} MiB",
            file=sys.stderr,
            flush=True,
        )
        return r

    def product(self, raw: str, n: int, procs: int) -> Result:
        db_name, dsn = fresh_database(self.admin_url)
        try:
            topics = self.out_topics(raw)
            env = flow_settings(self.brokers, self.model, topics, dsn, True)
            run = bf.run_flow(bf.flow_env(env), process_args(procs), timeout_s=3600)
            assert run.ok, run.error
            msgs = topic_messages(self.brokers, topics["predictions"])
            ids = {dict(m.headers() or [])["message_id"] for m in msgs}
            stored = count_rows(dsn, "predictions")
            assert len(ids) == n and stored == n, f"{len(ids)} messages, {stored} rows of {n}"
            startup = self.empty_run("flow", procs)
            return self._result(
                "product",
                procs,
                n,
                output_span(msgs),
                run,
                startup,
                "Kafka in → flow → PostgreSQL + Kafka out",
            )
        finally:
            drop_database(self.admin_url, db_name)

    def baseline(self, raw: str, n: int, procs: int) -> Result:
        out = self.topic("bout")
        env = {"BENCH_BROKERS": self.brokers, "BENCH_IN": raw, "BENCH_OUT": out}
        run = bf.run_flow(bf.flow_env(env), process_args(procs), BASELINE_FLOW, timeout_s=1800)
        assert run.ok, run.error
        msgs = topic_messages(self.brokers, out)
        assert len(msgs) == n, f"{len(msgs)} of {n}"
        return self._result(
            "baseline",
            procs,
            n,
            output_span(msgs),
            run,
            self.empty_run("baseline", procs),
            "bare Bytewax flow",
        )

    def flow_only(self, raw: str, n: int, procs: int, recovery: Path | None = None) -> Result:
        env = flow_settings(self.brokers, self.model, self.out_topics(raw), None, False)
        args = process_args(procs)
        if recovery is not None:
            args = [[*a, "-r", str(recovery), "-s", "30", "-b", "0"] for a in args]
        run = bf.run_flow(bf.flow_env(env), args, timeout_s=3600)
        assert run.ok, run.error
        startup = self.empty_run("flow", procs)
        span = run.seconds - startup.seconds
        return self._result("flow_only", procs, n, span, run, startup, "outputs off")

    def latency(self, rate: float) -> tuple[float, float, int]:
        """p50, p99 ms from reading (wall-clock stamped) to published prediction."""
        from confluent_kafka import Producer

        from models.schemas import iso_to_ms, ms_to_iso

        raw = self.topic("live", self.sizes.partitions)
        db_name, dsn = fresh_database(self.admin_url)
        topics = self.out_topics(raw)
        env = flow_settings(self.brokers, self.model, topics, dsn, True)
        env["PM_KAFKA__TAIL"] = "true"
        template = bf.sim_readings(1, 1)[0]
        machines = self.sizes.machines
        proc = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "flows.main"],
            cwd=ROOT,
            env=bf.flow_env(env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(8.0)  # start-up
            p = Producer({"bootstrap.servers": self.brokers, "linger.ms": "1"})
            began, sent = time.perf_counter(), 0
            while (elapsed := time.perf_counter() - began) < self.sizes.latency_s:
                due = int(elapsed * rate)
                while sent < due:
                    r = dict(template)
                    r["equipment_id"] = f"live-{sent % machines:05d}"
                    r["ts"] = ms_to_iso(time.time_ns() // 1_000_000)
                    p.produce(raw, bf.encode(r), key=r["equipment_id"].encode())
                    sent += 1
                p.poll(0)
                time.sleep(0.001)
            p.flush(30)
            time.sleep(3.0)  # let the last ones out
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            drop_database(self.admin_url, db_name)
        msgs = topic_messages(self.brokers, topics["predictions"])
        lat = []
        for m in msgs:
            doc = json.loads(m.value())
            lat.append(m.timestamp()[1] - iso_to_ms(doc["ts"]))
        lat = lat[len(lat) // 10 :]  # skip the first tenth (warming)
        if not lat:
            return float("nan"), float("nan"), 0
        q = statistics.quantiles(lat, n=100)
        return q[49], q[98], sent

    def close(self) -> None:
        delete_topics(self.brokers, self.topics)


def snapshot_bytes(recovery: Path) -> tuple[int, int]:
    """(keys, bytes) of the newest ``equipment_state`` snapshots in a recovery store."""
    keys = total = 0
    for db in recovery.glob("*.sqlite3"):
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT s.state_key, length(s.ser_change) FROM snaps s JOIN ("
                " SELECT step_id, state_key, max(snap_epoch) AS e FROM snaps"
                " WHERE step_id LIKE '%equipment_state%' GROUP BY step_id, state_key) m"
                " ON s.step_id = m.step_id AND s.state_key = m.state_key AND s.snap_epoch = m.e"
            ).fetchall()
        keys += len(rows)
        total += sum(n or 0 for _, n in rows)
    return keys, total


def table(results: Sequence[Result], extra: dict[str, Any]) -> str:
    lines = [
        "| run | processes | readings | readings/s | CPU µs/reading | peak RSS MiB | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.processes} | {r.readings:,} | {r.rate:,.0f} | "
            f"{r.cpu_us:,.0f} | {r.peak_rss_mib:,.0f} | {r.note} |"
        )
    lines.append("")
    lines += [f"- {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small fleet (smoke run)")
    ap.add_argument("--model", type=Path, default=ROOT / "artifacts" / "model")
    ap.add_argument("--out", type=Path, default=ROOT / "bench.json")
    ap.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["memory", "latency", "two"],
        help="leave a part out",
    )
    args = ap.parse_args(argv)
    brokers = os.environ.get("PM_TEST_KAFKA_BROKERS")
    admin_url = os.environ.get("PM_TEST_DATABASE_URL")
    if not (brokers and admin_url):
        print(
            "bench_e2e needs Kafka and PostgreSQL: `make services-up` (make bench does)",
            file=sys.stderr,
        )
        return 2
    if not args.model.exists():
        print(f"no model at {args.model}", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    bench = Bench(brokers, admin_url, args.model, sizes)
    began = time.perf_counter()
    out: dict[str, Any] = {
        "equipment": sizes.machines,
        "readings_per_equipment": sizes.readings,
        "mode": "quick" if args.quick else "full",
    }
    try:
        raw = bench.topic("raw", sizes.partitions)
        print(f"producing {sizes.machines:,} × {sizes.readings} readings", file=sys.stderr)
        n = produce_fleet(brokers, raw, sizes.machines, sizes.readings)
        two = "two" not in args.skip
        p1 = bench.product(raw, n, 1)
        p2 = bench.product(raw, n, 2) if two else None
        b1 = bench.baseline(raw, n, 1)
        b2 = bench.baseline(raw, n, 2) if two else None
        f1 = bench.flow_only(raw, n, 1)
        f2 = bench.flow_only(raw, n, 2) if two else None
        out |= {
            "readings_per_s_1proc": round(p1.rate),
            "readings_per_s_2proc": round(p2.rate) if p2 else None,
            "baseline_readings_per_s_1proc": round(b1.rate),
            "baseline_readings_per_s_2proc": round(b2.rate) if b2 else None,
            "flow_only_readings_per_s_1proc": round(f1.rate),
            "flow_only_readings_per_s_2proc": round(f2.rate) if f2 else None,
            "cpu_us_per_reading_1proc": round(p1.cpu_us, 1),
            "cpu_us_per_reading_2proc": round(p2.cpu_us, 1) if p2 else None,
            "flow_only_cpu_us_per_reading_1proc": round(f1.cpu_us, 1),
            "flow_only_cpu_us_per_reading_2proc": round(f2.cpu_us, 1) if f2 else None,
            "product_vs_baseline": round(p1.rate / b1.rate, 3),
            "flow_only_scaling_2proc": round(f2.rate / f1.rate, 3) if f2 else None,
            "peak_rss_mb": round(max(r.peak_rss_mib for r in bench.results), 1),
        }
        if "memory" not in args.skip:
            small, large = sizes.mem_machines
            rss = {}
            for m in (small, large):
                mem_raw = bench.topic(f"mem{m}", sizes.partitions)
                k = produce_fleet(brokers, mem_raw, m, sizes.mem_readings)
                with tempfile.TemporaryDirectory(prefix="pm-bench-rec-") as rec_name:
                    rec = Path(rec_name)
                    subprocess.run(
                        [sys.executable, "-m", "bytewax.recovery", str(rec), "1"],
                        check=True,
                        cwd=ROOT,
                        env=bf.flow_env({}),
                    )
                    r = bench.flow_only(mem_raw, k, 1, recovery=rec)
                    r.name = f"memory {m:,} machines"
                    keys, nbytes = snapshot_bytes(rec)
                rss[m] = r.peak_rss_mib
                out[f"snapshot_bytes_per_equipment_{m}"] = round(nbytes / max(keys, 1))
                out[f"peak_rss_mb_{m}"] = round(r.peak_rss_mib, 1)
            growth = (rss[large] - rss[small]) * 1024 * 1024 / (large - small)
            out["state_bytes_per_equipment"] = round(growth)
        if "latency" not in args.skip:
            rate = p1.rate / 2
            p50, p99, sent = bench.latency(rate)
            out |= {
                "latency_p50_ms": p50,
                "latency_p99_ms": p99,
                "latency_rate_readings_per_s": round(rate),
                "latency_readings": sent,
            }
    finally:
        bench.close()
    out["seconds"] = round(time.perf_counter() - began)
    out["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print("## End to end")
    print(table(bench.results, {k: v for k, v in out.items()}))
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Result", "Sizes", "asdict", "main", "threading"]
