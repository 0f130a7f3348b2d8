"""Tests of RedisDeduper and RedisStatusStore; integration tests use PM_TEST_REDIS_URL,
each with its own key prefix (keys deleted afterwards)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from connectors.redis_state import RedisDeduper, RedisStatusStore
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


# -- dedup -----------------------------------------------------------------------------


@integration
def test_first_time_is_true_once_across_instances_with_ttl(redis_url: str, prefix: str) -> None:
    worker_a = RedisDeduper(redis_url, ttl_s=3600, prefix=prefix)
    worker_b = RedisDeduper(redis_url, ttl_s=3600, prefix=prefix)
    assert worker_a.first_time("alert-1") is True
    assert worker_a.first_time("alert-1") is False
    assert worker_b.first_time("alert-1") is False  # another worker, or after a restart
    assert worker_b.first_time("alert-2") is True
    assert 3590 <= worker_a.client.ttl(prefix + "alert-1") <= 3600


@integration
def test_release_lets_the_alert_be_claimed_again(redis_url: str, prefix: str) -> None:
    d = RedisDeduper(redis_url, prefix=prefix)
    assert d.first_time("a") is True
    d.release("a")
    assert d.client.exists(prefix + "a") == 0
    assert d.first_time("a") is True
    assert d.first_time("a") is False


@integration
def test_claim_expires_after_ttl(redis_url: str, prefix: str) -> None:
    d = RedisDeduper(redis_url, ttl_s=1, prefix=prefix)
    assert d.first_time("a") is True
    time.sleep(1.2)
    assert d.first_time("a") is True


@integration
def test_retried_claim_recognises_its_own_token(redis_url: str, prefix: str) -> None:
    """A claim whose reply was lost is repeated with the same token and still wins."""
    d = RedisDeduper(redis_url, prefix=prefix)
    key = prefix + "a"
    assert d._claim(keys=[key], args=["token-1", 60]) == 1
    assert d._claim(keys=[key], args=["token-1", 60]) == 1  # the retry
    assert d._claim(keys=[key], args=["token-2", 60]) == 0  # anyone else


@integration
def test_reconnects_after_the_connection_is_killed(redis_url: str, prefix: str) -> None:
    d = RedisDeduper(redis_url, prefix=prefix, retry_initial_s=0.01)
    assert d.first_time("a") is True
    admin = redis.Redis.from_url(redis_url)
    old_id = d.client.client_id()
    assert admin.client_kill_filter(_id=str(old_id)) == 1
    assert d.first_time("b") is True
    assert d.client.client_id() != old_id  # a new connection
    assert d.first_time("a") is False
    admin.close()


def test_unreachable_server_raises_after_bounded_retries() -> None:
    sleeps: list[float] = []
    d = RedisDeduper(
        "redis://127.0.0.1:1/0",
        retry_attempts=4,
        retry_initial_s=0.1,
        retry_max_s=0.25,
        socket_timeout_s=1.0,
        sleep=sleeps.append,
    )
    with pytest.raises(redis.ConnectionError):
        d.first_time("a")
    assert sleeps == [0.1, 0.2, 0.25, 0.25]
    assert d.retries == 4


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
