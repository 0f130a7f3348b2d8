"""The service scripts keep data across stop/start, and start empty only when asked
(``--fresh``). Run on a private instance (own ports and PM_SERVICES_DIR), so the services
other tests use are never restarted."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis

from tests.private_services import PrivateServices

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def svc() -> Iterator[PrivateServices]:
    instance = PrivateServices()
    try:
        yield instance
    finally:
        instance.close()


def _pg_value(url: str) -> list[str]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        exists = conn.execute("SELECT to_regclass('kept') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            return []
        return [r[0] for r in conn.execute("SELECT v FROM kept ORDER BY v")]


def test_postgres_keeps_data_across_stop_start_and_fresh_empties_it(svc):
    svc.start("postgres", fresh=True)
    token = uuid.uuid4().hex
    with psycopg.connect(svc.database_url) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES (%s)", (token,))
    svc.stop("postgres")
    out = svc.start("postgres")
    assert "reusing the cluster" in out
    assert _pg_value(svc.database_url) == [token]
    svc.stop("postgres")
    out = svc.start("postgres", fresh=True)
    assert "initialised a new cluster" in out
    assert _pg_value(svc.database_url) == []
    svc.stop("postgres")


def test_redis_keeps_keys_across_stop_start_and_fresh_empties_it(svc):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    svc.start("redis", fresh=True)
    client = redis.Redis.from_url(svc.redis_url)
    client.set("pm:kept", "yes")
    client.hset("pm:status:x", mapping={"rul": "12.5"})
    client.close()
    svc.stop("redis")
    svc.start("redis")
    client = redis.Redis.from_url(svc.redis_url)
    assert client.get("pm:kept") == b"yes"
    assert client.hget("pm:status:x", "rul") == b"12.5"
    client.close()
    svc.stop("redis")
    svc.start("redis", fresh=True)
    client = redis.Redis.from_url(svc.redis_url)
    assert client.get("pm:kept") is None
    client.close()
    svc.stop("redis")


def test_kafka_keeps_topics_and_messages_across_stop_start(svc):
    if shutil.which("java") is None:
        pytest.skip("java is not installed")
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    svc.start("kafka", fresh=True)
    topic = f"kept-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": svc.kafka_brokers})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": svc.kafka_brokers})
    for i in range(10):
        producer.produce(topic, f"m{i}".encode(), key=str(i).encode())
    assert producer.flush(30) == 0
    svc.stop("kafka")
    out = svc.start("kafka")
    assert "reusing" in out

    admin = AdminClient({"bootstrap.servers": svc.kafka_brokers})
    meta = admin.list_topics(timeout=30)
    assert topic in meta.topics and len(meta.topics[topic].partitions) == 2
    consumer = Consumer({"bootstrap.servers": svc.kafka_brokers, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([topic])
    got: set[bytes] = set()
    for _ in range(120):
        for m in consumer.consume(100, timeout=0.5):
            if not m.error():
                got.add(m.value())
        if len(got) == 10:
            break
    consumer.close()
    assert got == {f"m{i}".encode() for i in range(10)}
    svc.stop("kafka")
