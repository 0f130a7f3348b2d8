"""Redis state shared by all workers: delivery marks for alerts (used when there is no
database) and the latest status per equipment.

Both classes retry a command on a connection error or timeout with bounded exponential
back-off (the client reconnects on the next attempt), then raise. Every command is safe to
repeat: the delivery claim is a Lua script that recognises its own earlier claim, and the
status write is a compare-and-set on the reading's event time. :class:`RedisHealth` turns
the raised errors into one log line per outage and the ``pm_redis_up`` gauge, for callers
that carry on without Redis.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from connectors import metrics
from models.schemas import Prediction, ms_to_iso

T = TypeVar("T")
log = logging.getLogger(__name__)

RETRYABLE_ERRORS = (redis.ConnectionError, redis.TimeoutError)

# KEYS[1] = the "delivered" mark, KEYS[2] = the lease; ARGV[1] = token, ARGV[2] = lease ms.
# 2 if already delivered; 1 if the lease is ours (newly set, or holding our token: a retried
# call whose first reply was lost); 0 if someone else holds it.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 2 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then return 1 end
if redis.call('GET', KEYS[2]) == ARGV[1] then return 1 end
return 0
"""

# Drop the lease KEYS[1] if it still holds our token ARGV[1].
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Write the hash KEYS[1] (fields ARGV[3..]) unless it holds a newer ts_ms than ARGV[1];
# ARGV[2] > 0 sets a TTL in seconds. 1 if written, 0 if the stored status is newer.
_SET_IF_NEWER = """
local cur = redis.call('HGET', KEYS[1], 'ts_ms')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'ts_ms', ARGV[1], unpack(ARGV, 3))
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
return 1
"""

_FLOAT_FIELDS = (
    "rul",
    "rul_hours",
    "rul_lower",
    "rul_upper",
    "health",
    "anomaly_score",
)


class _RedisBase:
    """A client whose commands are retried with bounded back-off on connection errors."""

    def __init__(
        self,
        url: str,
        retry_attempts: int,
        retry_initial_s: float,
        retry_max_s: float,
        socket_timeout_s: float,
        sleep: Callable[[float], None],
    ) -> None:
        self.client: redis.Redis = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0),  # retries are ours, with back-off and counting
        )
        self.retry_attempts = retry_attempts
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.retries = 0
        self.last_error = ""
        self._sleep = sleep

    def _call(self, fn: Callable[[], T]) -> T:
        delay = self.retry_initial_s
        for attempt in range(self.retry_attempts + 1):
            try:
                return fn()
            except RETRYABLE_ERRORS as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                if attempt == self.retry_attempts:
                    raise
                self.retries += 1
                self._sleep(delay)
                delay = min(delay * 2.0, self.retry_max_s)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.client.close()


class RedisHealth:
    """Up/down bookkeeping for a Redis client that degrades instead of failing: one
    warning when an outage starts, one line when it ends, ``pm_redis_up{client}`` and
    ``pm_redis_errors_total{client}``; ``should_try`` spaces out probes while down."""

    def __init__(self, client: str, probe_s: float = 2.0) -> None:
        self.client = client
        self.probe_s = probe_s
        self.up = True
        self.outages = 0
        self._down_since = 0.0
        self._next_probe = 0.0
        metrics.REDIS_UP.labels(client).set(1)

    def should_try(self, now: float | None = None) -> bool:
        return self.up or (time.monotonic() if now is None else now) >= self._next_probe

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        metrics.REDIS_ERRORS.labels(self.client).inc()
        self._next_probe = now + self.probe_s
        if self.up:
            self.up, self._down_since = False, now
            self.outages += 1
            metrics.REDIS_UP.labels(self.client).set(0)
            log.warning("redis (%s) unavailable: %s: %s; carrying on without it, probing every "
                        "%.0f s", self.client, type(exc).__name__, exc, self.probe_s)  # fmt: skip

    def ok(self) -> None:
        if not self.up:
            self.up = True
            metrics.REDIS_UP.labels(self.client).set(1)
            log.warning("redis (%s) back after %.1f s", self.client,
                        time.monotonic() - self._down_since)  # fmt: skip


CLAIMED, TAKEN, DONE = "claimed", "taken", "done"


class RedisDeliveryMarks(_RedisBase):
    """Claim-then-confirm marks per (alert id, target) for alert delivery without a
    database: ``claim`` takes a short lease unless the pair is marked delivered,
    ``confirm`` marks it delivered for ``done_ttl_s``, ``release`` gives a lease back.
    A sender that dies loses only its lease: another sends once it expires."""

    def __init__(
        self,
        url: str,
        done_ttl_s: int = 7 * 24 * 3600,
        prefix: str = "pm:delivery:",
        *,
        retry_attempts: int = 1,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 1.0,
        socket_timeout_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(url, retry_attempts, retry_initial_s, retry_max_s, socket_timeout_s, sleep)
        self.done_ttl_s = done_ttl_s
        self.prefix = prefix
        self._claim = self.client.register_script(_CLAIM)
        self._release = self.client.register_script(_RELEASE)

    def keys(self, alert_id: str, target: str) -> tuple[str, str]:
        base = f"{self.prefix}{alert_id}:{target}"
        return base + ":done", base + ":lease"

    def claim(self, alert_id: str, target: str, token: str, lease_s: float) -> str:
        """``claimed`` (ours to send), ``taken`` (someone else's lease) or ``done``."""
        keys = list(self.keys(alert_id, target))
        ms = max(1, int(lease_s * 1000))
        result = self._call(lambda: int(self._claim(keys=keys, args=[token, ms])))
        return {1: CLAIMED, 2: DONE}.get(result, TAKEN)

    def confirm(self, alert_id: str, target: str) -> None:
        done, lease = self.keys(alert_id, target)

        def run() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.set(done, "1", ex=self.done_ttl_s)
            pipe.delete(lease)
            pipe.execute()

        self._call(run)

    def release(self, alert_id: str, target: str, token: str) -> None:
        lease = self.keys(alert_id, target)[1]
        self._call(lambda: self._release(keys=[lease], args=[token]))


class RedisStatusStore(_RedisBase):
    """Latest prediction per equipment as a Redis hash ``{prefix}{equipment_id}``; a write
    never replaces a status with a newer event time (``ts_ms``), so replays and
    out-of-order batches leave the newest one in place."""

    def __init__(
        self,
        url: str,
        prefix: str = "pm:status:",
        *,
        ttl_s: int = 0,
        retry_attempts: int = 5,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 2.0,
        socket_timeout_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(url, retry_attempts, retry_initial_s, retry_max_s, socket_timeout_s, sleep)
        self.prefix = prefix
        self.ttl_s = ttl_s  # 0: keep forever; else forget equipment quiet for ttl_s
        self._set_if_newer = self.client.register_script(_SET_IF_NEWER)

    def key(self, equipment_id: str) -> str:
        return self.prefix + equipment_id

    def write(self, predictions: Iterable[Prediction]) -> int:
        """Store the newest prediction per equipment in one pipeline; return how many
        hashes were written (older-than-stored ones are skipped)."""
        latest: dict[str, Prediction] = {}
        for p in predictions:
            cur = latest.get(p.equipment_id)
            if cur is None or p.ts_ms >= cur.ts_ms:
                latest[p.equipment_id] = p
        if not latest:
            return 0

        def run() -> int:
            pipe = self.client.pipeline(transaction=False)
            for p in latest.values():
                self._set_if_newer(
                    keys=[self.key(p.equipment_id)],
                    args=[p.ts_ms, self.ttl_s, *_fields(p)],
                    client=pipe,
                )
            return sum(int(x) for x in pipe.execute())

        return self._call(run)

    def read(self, equipment_id: str) -> dict[str, Any]:
        """The stored status, typed (floats, ``ts_ms`` int, ``top_sensors`` list, None for
        missing values); ``{}`` if there is none."""
        key = self.key(equipment_id)
        raw = self._call(lambda: self.client.hgetall(key))
        return _parse({str(k): str(v) for k, v in raw.items()}) if raw else {}

    def equipment_ids(self) -> list[str]:
        """Every equipment with a stored status (SCAN; fine for fleets of thousands)."""
        keys = self._call(lambda: list(self.client.scan_iter(match=self.prefix + "*", count=1000)))
        return sorted(k[len(self.prefix) :] for k in keys)


def _fields(p: Prediction) -> list[str]:
    """Hash fields of a prediction as flat [name, value, ...]; None becomes ""."""
    values: dict[str, Any] = {
        "equipment_id": p.equipment_id,
        "equipment_type": p.equipment_type,
        "ts": ms_to_iso(p.ts_ms),
        "rul": p.rul,
        "rul_unit": p.rul_unit,
        "rul_hours": p.rul_hours,
        "rul_lower": p.rul_lower,
        "rul_upper": p.rul_upper,
        "health": p.health,
        "anomaly_score": p.anomaly_score,
        "status": p.status,
        "model_name": p.model_name,
        "model_version": p.model_version,
        "top_sensors": json.dumps(list(p.top_sensors)),
    }
    flat: list[str] = []
    for name, value in values.items():
        flat += [name, "" if value is None else str(value)]
    return flat


def _parse(raw: dict[str, str]) -> dict[str, Any]:
    """Inverse of ``_fields`` (plus ``ts_ms``).

    >>> _parse({"ts_ms": "5", "rul": "", "health": "0.5", "top_sensors": '["T24"]'})
    {'ts_ms': 5, 'rul': None, 'health': 0.5, 'top_sensors': ['T24']}
    """
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "ts_ms":
            out[name] = int(value)
        elif name in _FLOAT_FIELDS:
            out[name] = float(value) if value != "" else None
        elif name == "top_sensors":
            out[name] = json.loads(value) if value else []
        else:
            out[name] = value
    return out
