"""Built-in equipment simulator: a fleet of degrading (or healthy) units emitting readings.

``simulate(config)`` yields ``(reading_dict, Truth)`` pairs, interleaved across equipment in
event-time order; the reading is exactly the wire schema and never contains ground truth.
``simulate_units(...)`` returns whole run-to-failure histories as arrays for training sets, with
the same physics and the same numbers. The CLI (``python -m connectors.simulator``) writes JSONL
or produces to Kafka.

Determinism: every equipment draws from its own generators, seeded from
``(seed, equipment type, equipment number)``, and the noise streams are consumed row by row, so
results do not depend on interleaving, chunking or fleet size.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from connectors.sim_faults import FAULT_KINDS, FaultInjector
from connectors.sim_models import MODELS, EquipmentModel, Life
from models.schemas import SCHEMA_VERSION, iso_to_ms, ms_to_iso

DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SENSORS: dict[str, tuple[str, ...]] = {name: m.sensors for name, m in MODELS.items()}
SETTINGS: dict[str, tuple[str, ...]] = {name: m.settings for name, m in MODELS.items()}
RUL_UNIT: dict[str, str] = {name: m.rul_unit for name, m in MODELS.items()}
HOURS_PER_READING: dict[str, float] = {name: m.hours_per_reading for name, m in MODELS.items()}
ID_PREFIX = {"turbofan_engine": "turbofan", "pump": "pump"}
_TYPE_KEY = {"turbofan_engine": 1, "pump": 2}  # stable seed keys; never renumber
_BUFFERED_ROWS = 65_536  # rows held across the whole fleet while merging


@dataclass(frozen=True)
class SimConfig:
    """What to simulate.

    ``readings`` is per equipment; None (and no ``duration_s``) means run to failure.
    """

    num_equipment: int = 10
    equipment_types: tuple[str, ...] = ("turbofan_engine",)
    readings: int | None = None
    duration_s: float | None = None
    seed: int = 0
    healthy_fraction: float = 0.25
    replace_on_failure: bool = False
    start_ms: int = DEFAULT_START_MS
    cycle_seconds: float = 3600.0
    faults: tuple[str, ...] = ()
    fault_rate: float = 0.0

    def __post_init__(self) -> None:
        errors = config_errors(self)
        if errors:
            raise ValueError("; ".join(errors))


def config_errors(c: SimConfig) -> list[str]:
    """Everything wrong with a config, as messages (empty when valid)."""
    errors = []
    if c.num_equipment < 1:
        errors.append(f"num_equipment must be >= 1, got {c.num_equipment}")
    if not c.equipment_types or len(set(c.equipment_types)) < len(c.equipment_types):
        errors.append(f"equipment_types must be distinct and non-empty: {c.equipment_types}")
    errors += [
        f"unknown equipment type {t!r} (known: {', '.join(MODELS)})"
        for t in c.equipment_types
        if t not in MODELS
    ]
    if c.readings is not None and c.readings < 1:
        errors.append(f"readings must be >= 1, got {c.readings}")
    if c.duration_s is not None and not c.duration_s > 0:
        errors.append(f"duration_s must be > 0, got {c.duration_s}")
    if c.seed < 0:
        errors.append(f"seed must be >= 0, got {c.seed}")
    if not 0.0 <= c.healthy_fraction <= 1.0:
        errors.append(f"healthy_fraction must be in [0, 1], got {c.healthy_fraction}")
    if not c.cycle_seconds >= 0.001:
        errors.append(f"cycle_seconds must be >= 0.001, got {c.cycle_seconds}")
    if not 0.0 <= c.fault_rate <= 1.0:
        errors.append(f"fault_rate must be in [0, 1], got {c.fault_rate}")
    errors += [
        f"unknown fault kind {f!r} (known: {', '.join(FAULT_KINDS)})"
        for f in c.faults
        if f not in FAULT_KINDS
    ]
    if c.replace_on_failure and c.readings is None and c.duration_s is None:
        errors.append("replace_on_failure needs readings or duration_s (else it never ends)")
    return errors


@dataclass(frozen=True)
class Truth:
    """Ground truth for one reading. ``fault*`` describe the injected episode covering it.

    A ``level_shift`` episode covers the jump and the readings in which it is news; the shift
    itself stays for the rest of the run (the new normal), unlabelled once the episode ends.
    """

    equipment_id: str
    ts_ms: int
    rul: float
    rul_unit: str
    wear: float
    healthy: bool
    fault: str | None
    fault_sensor: str | None = None
    fault_start_ms: int | None = None
    fault_end_ms: int | None = None
    life: int = 0  # 0 for the first unit, +1 after each replacement

    def to_json_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return {"equipment_id": self.equipment_id, "ts": ms_to_iso(d.pop("ts_ms"))} | d


@dataclass(frozen=True)
class FaultEpisode:
    equipment_id: str
    kind: str
    sensor: str
    start_ms: int
    end_ms: int


def fault_episodes(truths: Iterable[Truth]) -> list[FaultEpisode]:
    """The distinct injected episodes named by a run's truths, in order of first appearance."""
    seen: dict[tuple[str, int], FaultEpisode] = {}
    for t in truths:
        if t.fault is not None and t.fault_start_ms is not None:
            key = (t.equipment_id, t.fault_start_ms)
            if key not in seen:
                assert t.fault_sensor is not None and t.fault_end_ms is not None
                ep = FaultEpisode(t.equipment_id, t.fault, t.fault_sensor, key[1], t.fault_end_ms)
                seen[key] = ep
    return list(seen.values())


def equipment_id(equipment_type: str, number: int) -> str:
    """``turbofan-0001`` style ids (number is 1-based).

    >>> equipment_id("pump", 7)
    'pump-0007'
    """
    return f"{ID_PREFIX.get(equipment_type, equipment_type)}-{number:04d}"


def healthy_flags(n: int, fraction: float, seed: int, equipment_type: str) -> np.ndarray:
    """Which of ``n`` units are healthy: evenly spread with a seeded phase, so any prefix of
    the fleet holds ``fraction`` of healthy units up to one, and adding units changes nothing.

    >>> int(healthy_flags(100, 0.25, 0, "pump").sum())
    25
    """
    ss = np.random.SeedSequence(seed, spawn_key=(_TYPE_KEY[equipment_type], 0))
    u = np.random.default_rng(ss).random()
    j = np.arange(1, n + 1)
    flags: np.ndarray = np.floor(j * fraction + u) > np.floor((j - 1) * fraction + u)
    return flags


def _rngs(seed: int, equipment_type: str, number: int) -> list[np.random.Generator]:
    """Five independent generators of one equipment: life, noise, settings, fault start/params."""
    ss = np.random.SeedSequence(seed, spawn_key=(_TYPE_KEY[equipment_type], number))
    return [np.random.default_rng(s) for s in ss.spawn(5)]


def _block(
    model: EquipmentModel,
    life: Life,
    t0: int,
    n: int,
    noise: np.random.Generator,
    settings_noise: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Readings for cycles t0+1 .. t0+n of one life: (settings, sensors, wear, rul)."""
    t = np.arange(t0 + 1, t0 + n + 1, dtype=float)
    z = noise.standard_normal((n, len(model.sensors)))
    zs = settings_noise.standard_normal((n, len(model.settings)))
    settings, sensors, w = model.generate(life, t, z, zs)
    return settings, sensors, w, (life.failure_cycle - t) * model.rul_per_cycle()


def simulate_units(
    equipment_type: str, n_units: int, seed: int, healthy_fraction: float = 0.0
) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Whole histories ``(equipment_id, settings (T, Ns), sensors (T, S), rul (T,))``.

    Degrading units run to failure (last RUL 0); healthy ones run their nominal life. The
    numbers equal ``simulate()`` with the same seed, one type, no limit and no faults.
    """
    model = MODELS[equipment_type]
    healthy = healthy_flags(n_units, healthy_fraction, seed, equipment_type)
    for number in range(1, n_units + 1):
        life_rng, noise, settings_noise, _, _ = _rngs(seed, equipment_type, number)
        life = model.draw_life(life_rng, bool(healthy[number - 1]))
        s, x, _, rul = _block(model, life, 0, life.nominal_cycles, noise, settings_noise)
        yield equipment_id(equipment_type, number), s, x, rul


_Item = tuple[int, int, dict[str, Any], Truth]


def _equipment_stream(
    cfg: SimConfig, equipment_type: str, number: int, fleet_index: int, healthy: bool
) -> Iterator[_Item]:
    chunk = max(32, min(1024, _BUFFERED_ROWS // cfg.num_equipment))
    model = MODELS[equipment_type]
    eq_id = equipment_id(equipment_type, number)
    life_rng, noise, settings_noise, fault_start, fault_param = _rngs(
        cfg.seed, equipment_type, number
    )
    period_s = cfg.cycle_seconds if equipment_type == "turbofan_engine" else model.period_s
    period_ms = max(1, round(period_s * 1000))
    limit = cfg.readings
    if cfg.duration_s is not None:
        by_time = math.ceil(cfg.duration_s * 1000 / period_ms)
        limit = by_time if limit is None else min(limit, by_time)
    life = model.draw_life(life_rng, healthy)
    if cfg.replace_on_failure:
        assert limit is not None
        total = limit
    else:
        total = life.nominal_cycles if limit is None else min(limit, life.failure_cycle)
    injector = None
    if cfg.faults and cfg.fault_rate > 0:
        injector = FaultInjector(model, cfg.faults, cfg.fault_rate, total, fault_start, fault_param)
    sensor_names, setting_names = model.sensors, model.settings
    rul_unit = model.rul_unit
    life_no, t, g = 0, 0, 0
    while g < total:
        if t == life.failure_cycle:  # only reached with replace_on_failure
            life, life_no, t = model.draw_life(life_rng, healthy), life_no + 1, 0
        n = min(chunk, total - g, life.failure_cycle - t)
        settings, x, w, rul = _block(model, life, t, n, noise, settings_noise)
        labels = injector.apply(x, g) if injector else [None] * n
        ts = cfg.start_ms + (g + np.arange(n, dtype=np.int64)) * period_ms
        iso = np.datetime_as_string(ts.astype("datetime64[ms]"), unit="ms", timezone="UTC")
        rows = zip(
            ts.tolist(),
            iso.tolist(),
            settings.tolist(),
            x.tolist(),
            w.tolist(),
            rul.tolist(),
            labels,
            strict=True,
        )
        for ts_ms, ts_iso, s_row, x_row, w_i, rul_i, ep in rows:
            reading = {
                "equipment_id": eq_id,
                "equipment_type": equipment_type,
                "ts": ts_iso,
                "settings": dict(zip(setting_names, s_row, strict=False)),
                "sensors": dict(zip(sensor_names, x_row, strict=False)),
                "schema_version": SCHEMA_VERSION,
            }
            if ep is None:
                truth = Truth(eq_id, ts_ms, rul_i, rul_unit, w_i, healthy, None, life=life_no)
            else:
                truth = Truth(
                    eq_id,
                    ts_ms,
                    rul_i,
                    rul_unit,
                    w_i,
                    healthy,
                    ep.kind,
                    sensor_names[ep.col],
                    cfg.start_ms + ep.start * period_ms,
                    cfg.start_ms + ep.end * period_ms,
                    life_no,
                )
            yield ts_ms, fleet_index, reading, truth
        g += n
        t += n


def fleet(cfg: SimConfig) -> list[tuple[str, int]]:
    """``(equipment_type, number)`` per equipment: the count split evenly across types, the
    first type taking the remainder.

    >>> fleet(SimConfig(num_equipment=3, equipment_types=("turbofan_engine", "pump")))
    [('turbofan_engine', 1), ('turbofan_engine', 2), ('pump', 1)]
    """
    k = len(cfg.equipment_types)
    counts = [cfg.num_equipment // k] * k
    counts[0] += cfg.num_equipment - sum(counts)
    return [
        (typ, j)
        for typ, c in zip(cfg.equipment_types, counts, strict=True)
        for j in range(1, c + 1)
    ]


def simulate(config: SimConfig) -> Iterator[tuple[dict[str, Any], Truth]]:
    """Readings of the whole fleet in event-time order (ties in fleet order), with their truth."""
    members = fleet(config)
    counts = {typ: sum(1 for t, _ in members if t == typ) for typ in config.equipment_types}
    flags = {
        typ: healthy_flags(n, config.healthy_fraction, config.seed, typ)
        for typ, n in counts.items()
    }
    streams = [
        _equipment_stream(config, typ, number, idx, bool(flags[typ][number - 1]))
        for idx, (typ, number) in enumerate(members)
    ]
    by_type = [
        _round_robin([s for s, (t, _) in zip(streams, members, strict=True) if t == typ])
        for typ in counts
    ]
    merged = by_type[0] if len(by_type) == 1 else heapq.merge(*by_type)
    for _, _, reading, truth in merged:
        yield reading, truth


def _round_robin(streams: list[Iterator[_Item]]) -> Iterator[_Item]:
    """Event-time order for equipment sharing start and period: one reading each per round,
    in fleet order, dropping equipment whose run has ended."""
    alive = streams
    while alive:
        still = []
        for stream in alive:
            item = next(stream, None)
            if item is not None:
                still.append(stream)
                yield item
        alive = still


# --- command line ---------------------------------------------------------------------------


class TokenBucket:
    """Rate limiter: ``take()`` blocks only when the bucket is empty, and then sleeps long
    enough for a batch of tokens (at least ``min_sleep_s``), never once per message."""

    def __init__(
        self,
        rate: float,
        burst_s: float = 0.1,
        min_sleep_s: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self.capacity = max(1.0, rate * burst_s)
        self.min_sleep_s = min_sleep_s
        self.tokens = self.capacity
        self.last = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now

    def take(self) -> None:
        if self.tokens < 1.0:
            self._refill()
            while self.tokens < 1.0:
                self.sleep(max(self.min_sleep_s, (1.0 - self.tokens) / self.rate))
                self._refill()
        self.tokens -= 1.0


class KafkaSink:
    """confluent-kafka producer: key = equipment_id, batched by ``linger.ms``, delivery counted."""

    def __init__(
        self,
        brokers: str,
        topic: str,
        linger_ms: int = 20,
        message_timeout_ms: int = 60_000,
        flush_timeout_s: float = 90.0,
    ) -> None:
        from confluent_kafka import Producer

        self.topic, self.flush_timeout_s = topic, flush_timeout_s
        self.delivered = 0
        self.failed = 0
        self.last_error: str | None = None
        self.producer = Producer(
            {
                "bootstrap.servers": brokers,
                "linger.ms": linger_ms,
                "compression.type": "lz4",
                "message.timeout.ms": message_timeout_ms,
                "enable.idempotence": True,
            }
        )

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
            self.last_error = str(err)

    def send(self, key: str, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value, key, on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                self.producer.poll(0.1)
        self.producer.poll(0)

    def wait(self, seconds: float) -> None:
        """Sleep while serving delivery callbacks (used by the rate limiter)."""
        self.producer.poll(seconds)

    def close(self) -> None:
        """Flush; anything still queued after the timeout counts as failed."""
        remaining = self.producer.flush(self.flush_timeout_s)  # runs callbacks: read after
        self.failed += remaining


def _parse_start(text: str) -> int:
    try:
        return iso_to_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from exc


def _positive(kind: type[int | float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m connectors.simulator",
        description="Simulate a fleet of degrading equipment and emit sensor readings (JSONL).",
    )
    p.add_argument("--num-equipment", type=_positive(int), default=10)
    p.add_argument(
        "--equipment-type",
        action="append",
        metavar="TYPE",
        help=f"repeat or comma-separate to mix types; one of {sorted(MODELS)} "
        "(default turbofan_engine)",
    )
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--readings", type=_positive(int), help="readings per equipment")
    limit.add_argument("--duration", type=_positive(float), help="event-time span in seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--healthy-fraction", type=float, default=0.25)
    p.add_argument("--replace-on-failure", action="store_true")
    p.add_argument("--start", type=_parse_start, default=DEFAULT_START_MS, help="ISO-8601 UTC")
    p.add_argument("--cycle-seconds", type=_positive(float), default=3600.0)
    p.add_argument("--faults", default="", help=f"comma-separated subset of {FAULT_KINDS}")
    p.add_argument("--fault-rate", type=float, default=0.0, help="episode starts per reading")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", help="JSONL file (default: stdout)")
    out.add_argument("--kafka", metavar="HOST:PORT", help="produce to this Kafka bootstrap")
    p.add_argument("--topic", default="raw_sensor_data")
    p.add_argument(
        "--delivery-timeout",
        type=_positive(float),
        default=60.0,
        metavar="S",
        help="Kafka: seconds before an undelivered reading counts as failed",
    )
    p.add_argument("--rate", type=_positive(float), help="readings per second (default: no limit)")
    p.add_argument("--truth-out", help="JSONL file for the ground truth of every reading")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    types = [
        t.strip() for arg in args.equipment_type or ["turbofan_engine"] for t in arg.split(",")
    ]
    return SimConfig(
        num_equipment=args.num_equipment,
        equipment_types=tuple(dict.fromkeys(t for t in types if t)),
        readings=args.readings,
        duration_s=args.duration,
        seed=args.seed,
        healthy_fraction=args.healthy_fraction,
        replace_on_failure=args.replace_on_failure,
        start_ms=args.start,
        cycle_seconds=args.cycle_seconds,
        faults=tuple(f.strip() for f in args.faults.split(",") if f.strip()),
        fault_rate=args.fault_rate,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    if cfg.faults and cfg.fault_rate == 0:
        print("warning: --faults given but --fault-rate is 0; no faults", file=sys.stderr)

    kafka = None
    if args.kafka:
        timeout_ms = round(args.delivery_timeout * 1000)
        kafka = KafkaSink(args.kafka, args.topic, message_timeout_ms=timeout_ms)
    out: IO[str] | None = None
    if kafka is None:
        out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    truth_out = open(args.truth_out, "w", encoding="utf-8") if args.truth_out else None  # noqa: SIM115
    bucket = None
    if args.rate:
        bucket = TokenBucket(args.rate, sleep=kafka.wait if kafka else time.sleep)
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    count, began = 0, time.monotonic()
    next_progress = began + 10.0
    try:
        for reading, truth in simulate(cfg):
            if bucket is not None:
                bucket.take()
            line = dumps(reading)
            if kafka is not None:
                kafka.send(reading["equipment_id"], line.encode())
            else:
                assert out is not None
                out.write(line + "\n")
            if truth_out is not None:
                truth_out.write(dumps(truth.to_json_dict()) + "\n")
            count += 1
            if count & 1023 == 0 and time.monotonic() >= next_progress:
                next_progress += 10.0
                rate = count / (time.monotonic() - began)
                print(f"... {count} readings ({rate:.0f}/s)", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    except BrokenPipeError:  # e.g. `| head`: stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    finally:
        if truth_out is not None:
            truth_out.close()
        if out is not None and out is not sys.stdout:
            out.close()
    if kafka is not None:
        kafka.close()
        detail = f"; last error: {kafka.last_error}" if kafka.last_error else ""
        print(
            f"produced {count} readings ({kafka.failed} failed){detail}",
            file=sys.stderr,
        )
        return 1 if kafka.failed else 0
    where = args.out or "stdout"
    print(
        f"wrote {count} readings to {where} in {time.monotonic() - began:.1f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
