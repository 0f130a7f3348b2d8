"""Tests of RedisDeliveryMarks, RedisHealth and RedisStatusStore; integration tests use
PM_TEST_REDIS_URL, each with its own key prefix (keys deleted afterwards)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from connectors import metrics
from connectors.redis_state import (
    CLAIMED,
    DONE,
    TAKEN,
    RedisDeliveryMarks,
    RedisHealth,
    RedisStatusStore,
)
from models.schemas import Prediction

integration = pytest.mark.integration


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("PM_TEST_REDIS_URL")
    if not url:
        pytest.skip("PM_TEST_REDIS_URL is not set: no Redis server to test against")
    return url


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    p = f"pmtest:{uuid.uuid4().hex[:12]}:"
    yield p
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=p + "*"))
    if keys:
        client.delete(*keys)
    client.close()


def prediction(equipment_id: str, ts_ms: int, health: float, **kw: object) -> Prediction:
    fields: dict[str, object] = {
        "equipment_id": equipment_id,
        "equipment_type": "turbofan_engine",
        "ts_ms": ts_ms,
        "rul": 42.0,
        "rul_unit": "cycles",
        "rul_hours": None,
        "rul_lower": 30.5,
        "rul_upper": 55.25,
        "health": health,
        "anomaly_score": 0.125,
        "status": "warning",
        "model_name": "pm",
        "model_version": "7",
        "top_sensors": ("T24", "T50"),
    }
    fields.update(kw)
    return Prediction(**fields)  # type: ignore[arg-type]


# -- delivery marks ----------------------------------------------------------------------


@integration
def test_claim_is_exclusive_until_confirmed_or_released(redis_url: str, prefix: str) -> None:
    worker_a = RedisDeliveryMarks(redis_url, prefix=prefix, done_ttl_s=3600)
    worker_b = RedisDeliveryMarks(redis_url, prefix=prefix)
    assert worker_a.claim("alert-1", "t1", "tok-a", 60) == CLAIMED
    assert worker_a.claim("alert-1", "t1", "tok-a", 60) == CLAIMED  # a retried call
    assert worker_b.claim("alert-1", "t1", "tok-b", 60) == TAKEN
    assert worker_b.claim("alert-1", "t2", "tok-b", 60) == CLAIMED  # another target
    worker_b.release("alert-1", "t2", "tok-a")  # not its token: no effect
    assert worker_a.claim("alert-1", "t2", "tok-c", 60) == TAKEN
    worker_b.release("alert-1", "t2", "tok-b")
    assert worker_a.claim("alert-1", "t2", "tok-c", 60) == CLAIMED
    worker_a.confirm("alert-1", "t1")
    assert worker_b.claim("alert-1", "t1", "tok-b", 60) == DONE
    done, lease = worker_a.keys("alert-1", "t1")
    assert worker_a.client.exists(lease) == 0
    assert 3590 <= worker_a.client.ttl(done) <= 3600


@integration
def test_a_dead_senders_lease_expires(redis_url: str, prefix: str) -> None:
    marks = RedisDeliveryMarks(redis_url, prefix=prefix)
    assert marks.claim("a", "t", "dead-process", 0.3) == CLAIMED
    assert marks.claim("a", "t", "new-process", 0.3) == TAKEN
    time.sleep(0.5)
    assert marks.claim("a", "t", "new-process", 0.3) == CLAIMED


@integration
def test_reconnects_after_the_connection_is_killed(redis_url: str, prefix: str) -> None:
    d = RedisDeliveryMarks(redis_url, prefix=prefix, retry_initial_s=0.01)
    assert d.claim("a", "t", "x", 60) == CLAIMED
    admin = redis.Redis.from_url(redis_url)
    old_id = d.client.client_id()
    assert admin.client_kill_filter(_id=str(old_id)) == 1
    assert d.claim("b", "t", "x", 60) == CLAIMED
    assert d.client.client_id() != old_id  # a new connection
    assert d.claim("a", "t", "y", 60) == TAKEN
    admin.close()


def test_unreachable_server_raises_after_bounded_retries() -> None:
    sleeps: list[float] = []
    d = RedisDeliveryMarks(
        "redis://127.0.0.1:1/0",
        retry_attempts=4,
        retry_initial_s=0.1,
        retry_max_s=0.25,
        socket_timeout_s=1.0,
        sleep=sleeps.append,
    )
    with pytest.raises(redis.ConnectionError):
        d.claim("a", "t", "x", 1)
    assert sleeps == [0.1, 0.2, 0.25, 0.25]
    assert d.retries == 4


def test_health_logs_once_per_outage_and_sets_the_gauge(caplog: pytest.LogCaptureFixture) -> None:
    name = f"test-{uuid.uuid4().hex[:6]}"
    gauge = metrics.REDIS_UP.labels(name)
    errors = metrics.REDIS_ERRORS.labels(name)
    health = RedisHealth(name, probe_s=0.2)
    assert gauge._value.get() == 1 and health.should_try()
    with caplog.at_level("WARNING", logger="connectors.redis_state"):
        for _ in range(3):
            health.failed(redis.ConnectionError("refused"))
        assert not health.should_try()
        time.sleep(0.25)
        assert health.should_try()
        health.ok()
        health.ok()
        health.failed(redis.ConnectionError("refused again"))
    lines = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in lines) == 2, lines
    assert sum("back after" in m for m in lines) == 1, lines
    assert health.outages == 2 and gauge._value.get() == 0
    assert errors._value.get() == 4


# -- status ------------------------------------------------------------------------------


@integration
def test_status_round_trips_all_fields(redis_url: str, prefix: str) -> None:
    s = RedisStatusStore(redis_url, prefix=prefix)
    assert s.read("turbofan-0001") == {}
    assert s.write([prediction("turbofan-0001", 1_000, 0.75)]) == 1
    assert s.read("turbofan-0001") == {
        "equipment_id": "turbofan-0001",
        "equipment_type": "turbofan_engine",
        "ts": "1970-01-01T00:00:01.000Z",
        "ts_ms": 1_000,
        "rul": 42.0,
        "rul_unit": "cycles",
        "rul_hours": None,
        "rul_lower": 30.5,
        "rul_upper": 55.25,
        "health": 0.75,
        "anomaly_score": 0.125,
        "status": "warning",
        "model_name": "pm",
        "model_version": "7",
        "top_sensors": ["T24", "T50"],
    }
    assert s.client.ttl(prefix + "turbofan-0001") == -1  # no TTL by default


@integration
def test_status_keeps_the_newest_event_time(redis_url: str, prefix: str) -> None:
    s = RedisStatusStore(redis_url, prefix=prefix)
    # Within one batch the newest per equipment wins, whatever the order.
    assert s.write([prediction("a", 3_000, 0.3), prediction("a", 1_000, 0.1)]) == 1
    assert s.read("a")["health"] == 0.3
    # An older (late or replayed) batch does not overwrite it ...
    assert s.write([prediction("a", 2_000, 0.2), prediction("b", 2_000, 0.2)]) == 1
    assert s.read("a")["ts_ms"] == 3_000 and s.read("a")["health"] == 0.3
    assert s.read("b")["health"] == 0.2
    # ... a newer one does; the same ts (a replay) rewrites the same values.
    assert s.write([prediction("a", 4_000, 0.4, status="critical")]) == 1
    assert s.read("a")["status"] == "critical"
    assert s.write([prediction("a", 4_000, 0.4, status="critical")]) == 1
    assert s.read("a")["ts_ms"] == 4_000
    assert s.equipment_ids() == ["a", "b"]


@integration
def test_status_ttl_and_reconnect(redis_url: str, prefix: str) -> None:
    s = RedisStatusStore(redis_url, prefix=prefix, ttl_s=600, retry_initial_s=0.01)
    s.write([prediction("a", 1_000, 0.5)])
    assert 590 <= s.client.ttl(prefix + "a") <= 600
    admin = redis.Redis.from_url(redis_url)
    old_id = s.client.client_id()
    assert admin.client_kill_filter(_id=str(old_id)) == 1
    assert s.write([prediction("a", 2_000, 0.6)]) == 1
    assert s.client.client_id() != old_id
    assert s.read("a")["health"] == 0.6
    admin.close()
