"""No input can stop the flow: a corpus of hostile inputs (tests/hostile_corpus.py) is
produced to the real Kafka topic, interleaved with a valid simulated fleet, and the real
flow (``python -m bytewax.run flows.main``, 2 workers, recovery on) runs with every output
on: PostgreSQL, Kafka predictions/alerts/dead letters, Redis status and alert delivery to a
real HTTP receiver. The flow is SIGKILLed midway and restarted from its recovery store, so
the inputs after the last snapshot, poison included, are replayed.

Asserted: the restarted flow finishes by itself; every input ends in the one place the
corpus says (stored, dead letter with its reason, late / type-changed dead letter, or
dropped duplicate); the valid readings after each poison input are processed."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC

import psycopg
import pytest

from connectors.model_store import load_path
from connectors.redis_state import RedisStatusStore
from tests.bench_flow import sim_readings
from tests.flow_process import (
    FlowProcesses,
    consume_all,
    flow_env,
    produce,
    service_run,
    wait_until,
)
from tests.hostile_corpus import corpus
from tests.http_receiver import HttpReceiver

pytestmark = pytest.mark.integration


@pytest.fixture
def services():
    # the input topic takes messages up to 2 MB, so a 1.1 MB reading reaches the flow
    with service_run("hostile", redis_db=5, raw_config={"max.message.bytes": "2100000"}) as s:
        yield s


def test_hostile_corpus_through_the_whole_flow_with_a_crash(services, model_dir, tmp_path):
    brokers, db, redis_url, topics = (
        services.brokers,
        services.db,
        services.redis_url,
        services.topics,
    )
    valid = sim_readings(12, 70, seed=5)
    entries = corpus(valid)
    placed = produce(
        brokers,
        topics["raw"],
        [(e.key, e.value) for e in entries],
        {"message.max.bytes": "2100000"},
    )
    by_offset = {pos: e for pos, e in zip(placed, entries, strict=True)}
    n_processed = sum(e.outcome == "processed" for e in entries)

    with HttpReceiver() as receiver:
        settings = services.flow_settings(
            model_dir,
            receiver.apprise_url(f"/alerts/{services.run}"),
            postgres={"buffer_size": 100, "write_interval_seconds": 0.5},
        )
        settings["kafka"]["batch_size"] = 50
        env = flow_env(**settings)
        flow = FlowProcesses(env, tmp_path / "recovery", tmp_path / "logs", workers=2)

        flow.start()
        wait_until(
            lambda: services.count("sensor_readings") >= n_processed // 3,
            120,
            "a third of the readings stored",
            alive=flow.alive,
        )
        flow.kill()  # a crash midway: the restart replays from the last snapshot
        flow.env["PM_KAFKA__TAIL"] = "false"
        flow.start()
        assert flow.wait(240) == [0], flow.tail()
        logs = flow.logs()

    # 1. every input ended where the corpus says
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT equipment_id, ts FROM sensor_readings").fetchall()
        preds = conn.execute(
            "SELECT equipment_id, ts, rul, imputed_sensors, status FROM predictions"
        ).fetchall()
    stored_keys = Counter((eq, round(ts.timestamp() * 1000)) for eq, ts in rows)
    assert max(stored_keys.values()) == 1, "a reading stored twice"
    dlq = consume_all(brokers, topics["dlq"])
    parse_letters: dict[tuple[int, int], str] = {}
    state_letters: dict[str, list[str]] = defaultdict(list)
    for m in dlq:
        h = dict(m.headers())
        reason = h["dlq.reason"].decode()
        if h["dlq.source.topic"].decode() == topics["raw"]:
            pos = (int(h["dlq.source.partition"]), int(h["dlq.source.offset"]))
            parse_letters[pos] = reason
        else:
            state_letters[h["dlq.equipment_id"].decode()].append(reason)

    where: Counter[str] = Counter()
    for pos, e in by_offset.items():
        key = (e.equipment_id, e.ts_ms)
        if e.outcome == "dead":
            assert pos in parse_letters, f"{e.name}: no dead letter"
            for word in e.words:
                assert word in parse_letters[pos], f"{e.name}: {parse_letters[pos]!r}"
            where["dead letter"] += 1
        elif e.outcome == "processed":
            assert stored_keys[key] == 1, f"{e.name}: stored {stored_keys[key]} times"
            assert pos not in parse_letters, f"{e.name}: dead-lettered: {parse_letters[pos]}"
            where["processed"] += 1
        elif e.outcome == "state_dead":
            assert stored_keys[key] == 0, f"{e.name} was stored"
            reasons = state_letters[e.equipment_id or ""]
            assert any(all(w in r for w in e.words) for r in reasons), (e.name, reasons)
            where["late / type changed"] += 1
        else:  # duplicate: its first copy is stored, once
            assert stored_keys[key] == 1, e.name
            where["duplicate"] += 1
    assert sum(where.values()) == len(entries)
    assert len(stored_keys) == n_processed, "nothing stored that the corpus did not expect"
    # the dead letter of the 1.1 MB input was cut to fit the producer, and says so
    big = [m for m in dlq if dict(m.headers()).get("dlq.truncated")]
    assert big and all(len(m.value()) <= 512 * 1024 for m in big)

    # 2. predictions: one per stored reading; what lacked model sensors is flagged
    assert len({(eq, ts) for eq, ts, *_ in preds}) == n_processed
    bundle = load_path(model_dir)
    model = bundle.for_type("turbofan_engine")
    assert model is not None
    model_sensors = set(model.meta.feature_config.sensors)
    pred = {(eq, round(ts.timestamp() * 1000)): (rul, imp, st) for eq, ts, rul, imp, st in preds}
    for e in entries:
        if "sent" in e.expect:
            rul, imputed, _status = pred[(e.equipment_id, e.ts_ms)]
            assert imputed == len(model_sensors - set(e.expect["sent"])) > 0, e.name
            if "rul" in e.expect:
                assert rul is None, f"{e.name}: a RUL from sensors never seen"
    clean = [imp for (eq, _), (_, imp, _) in pred.items() if eq.startswith("turbofan-0")]
    assert clean.count(0) >= len(clean) - 1  # the one lacking reading, only

    # 3. the machine sent a reading dated 9999 goes on normally, and its status is not frozen
    first = sorted({r["equipment_id"] for r in valid})[0]
    last_ts = max(r["ts"] for r in valid if r["equipment_id"] == first)
    status = RedisStatusStore(redis_url)
    latest = status.read(first)
    status.close()
    assert latest is not None
    from datetime import datetime

    assert datetime.fromtimestamp(latest["ts_ms"] / 1000, tz=UTC).year < 9999
    assert latest["ts_ms"] == round(datetime.fromisoformat(last_ts).timestamp() * 1000)

    # 4. the log says what happened without echoing control characters
    assert "\x1b[31m" not in logs and "\nFAKE LOG LINE" not in logs
    print(
        f"\nhostile corpus: {len(entries)} inputs ({len(valid)} valid readings); ended: "
        + ", ".join(f"{k} {v}" for k, v in sorted(where.items()))
        + f"; dead letters on the topic {len(dlq)} (replay after the kill repeats some); "
        f"alerts delivered {len(receiver.requests)}"
    )
    json.dumps(dict(where))
