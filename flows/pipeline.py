"""The predictive-maintenance dataflow, wired by :func:`build_flow` (see ``flows.main``).

source → parse_reading ─bad→ dead letters
           └→ key_on_equipment → equipment_state (window, dedup, late, River score)
              → predict_rul (batched ONNX) → evaluate_alerts → alerts
Predictions, alerts and dead letters go to the configured outputs. Step ids are part of
the recovery schema: renaming one resets its state.
"""

from __future__ import annotations

import logging
import pickle
import sys
from typing import Any, TypeGuard, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink

from connectors import metrics
from connectors.kafka_io import RawRecord
from connectors.settings import Settings, load_settings
from connectors.sinks import ConsoleSink, DiscardSink, JsonlSink
from flows.steps import (
    AlertLogic,
    DriftLogic,
    EquipmentLogic,
    Runtime,
    drift_sample,
    predict_items,
)
from models.equipment_state import Scored
from models.parsing import DEFAULT_LIMITS, ParseLimits, parse_reading
from models.schemas import Alert, DeadLetter, Reading

log = logging.getLogger(__name__)


def parse(record: RawRecord, limits: ParseLimits = DEFAULT_LIMITS) -> Reading | DeadLetter:
    result = parse_reading(record.payload, record.origin, limits)
    if isinstance(result, Reading):
        metrics.READINGS.labels(metrics.type_label(result.equipment_type)).inc()
    else:
        metrics.DEAD_LETTERS.labels("parse").inc()
        if isinstance(record.payload, bytes):
            result = DeadLetter(
                result.reason, result.payload, result.origin, result.equipment_id,
                result.ts_ms, raw=record.payload, key=record.key,
            )  # fmt: skip
    return result


def build_source(
    flow: Dataflow, settings: Settings
) -> tuple[Stream[Any], Stream[DeadLetter] | None]:
    """The configured input as a stream of raw records, plus source-level dead letters
    (consumer errors; only Kafka has them)."""
    kind, _, arg = settings.source.partition(":")
    if kind == "kafka":
        from connectors.kafka_io import ensure_topics, kafka_input

        k = settings.kafka
        config = {key: v.get_secret_value() for key, v in k.client_config.items()}
        ensure_topics(
            settings.kafka_brokers.split(","), {k.input_topic: k.input_partitions}, config
        )
        out = kafka_input(
            "kafka_input",
            flow,
            brokers=settings.kafka_brokers.split(","),
            topic=settings.kafka.input_topic,
            client_config={
                k: v.get_secret_value() for k, v in settings.kafka.client_config.items()
            },
            batch_size=settings.kafka.batch_size,
            tail=settings.kafka.tail,
        )
        return out.oks, out.errs
    from connectors import sources

    source: Source[Any]
    if kind == "simulator":
        from connectors.simulator import SimConfig

        sim = settings.simulator
        source = sources.simulator_source(
            SimConfig(
                num_equipment=sim.num_equipment,
                equipment_types=sim.equipment_types,
                readings=sim.readings,
                seed=sim.seed,
                healthy_fraction=sim.healthy_fraction,
                faults=sim.faults,
                fault_rate=sim.fault_rate,
            ),
            partitions=sim.partitions,
        )
    elif kind == "cmapss":
        source = sources.cmapss_source(arg)
    else:
        source = sources.jsonl_source(arg)
    return op.input("source", flow, source), None


def build_flow(
    settings: Settings,
    *,
    source: Source[Any] | None = None,
    output: Sink[Any] | None = None,
) -> Dataflow:
    """Wire the dataflow. ``source`` and ``output`` override the configured input and the
    embedded output (tests pass ``TestingSource``/``TestingSink``)."""
    runtime = Runtime.from_settings(settings)
    flow = Dataflow("predictive_maintenance")
    if source is not None:
        raw, source_errors = op.input("source", flow, source), None
    else:
        raw, source_errors = build_source(flow, settings)

    limits = settings.limits.parse_limits()
    parsed = op.map("parse_reading", raw, lambda record: parse(record, limits))
    valid = op.branch("split_valid", parsed, _is_reading)
    keyed = op.key_on("key_on_equipment", valid.trues, lambda r: r.equipment_id)

    def equipment_builder(resume: bytes | None) -> EquipmentLogic:
        return EquipmentLogic(runtime, _resume(resume, "equipment_state"))

    state_out = op.stateful_batch("equipment_state", keyed, equipment_builder)
    scored = op.branch("split_late", state_out, _is_scored)
    predictions = op.flat_map_batch(
        "predict_rul", scored.trues, lambda items: predict_items(runtime, items)
    )

    def alert_builder(resume: bytes | None) -> AlertLogic:
        return AlertLogic(runtime.thresholds, _resume(resume, "evaluate_alerts"))

    alerts = op.stateful_batch("evaluate_alerts", predictions, alert_builder)
    drift_evaluations = None
    if settings.drift.enabled and runtime.holder is not None:
        samples = op.filter_map("drift_sample", scored.trues, lambda kv: drift_sample(runtime, kv))

        def drift_builder(resume: bytes | None) -> DriftLogic:
            return DriftLogic(runtime, _resume(resume, "feature_drift"))

        drift_out = op.stateful_batch("feature_drift", samples, drift_builder)
        drift_split = op.branch("split_drift", drift_out, lambda kv: isinstance(kv[1], Alert))
        alerts = op.merge("all_alerts", alerts, drift_split.trues)
        drift_evaluations = op.map("drift_values", drift_split.falses, lambda kv: kv[1])
    dead = op.merge(
        "dead_letters",
        valid.falses,
        op.map("late_letters", scored.falses, lambda kv: cast(DeadLetter, kv[1])),
        *([source_errors] if source_errors is not None else []),
    )

    # readings the state step accepted: late, duplicate and refused ones are not stored
    accepted = op.map("accepted_readings", scored.trues, lambda kv: kv[1].reading)
    has_service_output = _service_outputs(
        settings, accepted, predictions, alerts, cast(Stream[DeadLetter], dead),
        drift_evaluations,
    )  # fmt: skip
    embedded = output if output is not None else _embedded_output(settings)
    if embedded is None and not has_service_output:
        embedded = DiscardSink()  # PM_OUTPUT=none and no services: still a valid dataflow
    if embedded is not None:
        everything = op.merge(
            "all_outputs",
            op.map("prediction_values", predictions, lambda kv: kv[1]),
            op.map("alert_values", alerts, lambda kv: kv[1]),
            dead,
        )
        op.output("embedded_output", op.key_on("key_output", everything, _key), embedded)
    return flow


def _service_outputs(
    settings: Settings,
    readings: Stream[Reading],
    predictions: Stream[tuple[str, Any]],
    alerts: Stream[tuple[str, Any]],
    dead: Stream[DeadLetter],
    drift_evaluations: Stream[Any] | None,
) -> bool:
    """PostgreSQL, Kafka, Redis and alert delivery, each when configured; True if any."""
    secret = lambda v: v.get_secret_value() if v is not None else None  # noqa: E731
    database_url, redis_url = secret(settings.database_url), secret(settings.redis_url)
    alert_values = op.map("alert_out", alerts, lambda kv: kv[1])
    prediction_values = op.map("prediction_out", predictions, lambda kv: kv[1])
    if database_url:
        from connectors.flow_sinks import PostgresSink
        from connectors.migrate import apply_migrations

        if settings.postgres.migrate_on_start:
            applied = apply_migrations(database_url)
            if applied:
                log.warning("applied migrations %s", applied)
        pg = settings.postgres
        stored = op.merge("to_store", readings, prediction_values, alert_values)
        op.output(
            "postgres_out",
            op.key_on("key_store", stored, _key),
            PostgresSink(
                database_url,
                pg.buffer_size,
                pg.write_interval_seconds,
                pg.partitions,
                pg.statement_timeout_s,
                pg.lock_timeout_s,
            ),
        )
        if drift_evaluations is not None:
            from connectors.flow_sinks import DriftStoreSink

            op.output("drift_store", drift_evaluations, DriftStoreSink(database_url))
    kafka_out = settings.kafka.output_enabled
    if kafka_out or (kafka_out is None and settings.source == "kafka"):
        from connectors import kafka_io

        k = settings.kafka
        brokers = settings.kafka_brokers.split(",")
        config = {key: v.get_secret_value() for key, v in k.client_config.items()}
        kafka_io.ensure_topics(
            brokers, {k.predictions_topic: k.input_partitions, k.alerts_topic: 1,
                      k.dlq_topic: 1}, config,
        )  # fmt: skip

        def sink(topic: str) -> kafka_io.KafkaProducerSink:
            return kafka_io.KafkaProducerSink(
                brokers, topic, config, name=topic, metrics=metrics.sink_observer
            )

        op.output("predictions_topic", op.map("prediction_msg", prediction_values,
                  kafka_io.prediction_message), sink(k.predictions_topic))  # fmt: skip
        op.output("alerts_topic", op.map("alert_msg", alert_values, kafka_io.alert_message),
                  sink(k.alerts_topic))  # fmt: skip
        op.output("dlq_topic", op.map("dlq_msg", dead, kafka_io.dead_letter_message),
                  sink(k.dlq_topic))  # fmt: skip
    if redis_url:
        from connectors.flow_sinks import RedisStatusSink

        op.output("redis_status", prediction_values, RedisStatusSink(redis_url))
    urls = [u.get_secret_value() for u in settings.apprise_urls]
    if urls:
        from connectors.flow_sinks import AlertNotifySink

        notify = AlertNotifySink(urls, database_url, redis_url, settings.alert_delivery)
        op.output("notify_alerts", alert_values, notify)
    return bool(database_url or redis_url or urls) or bool(
        kafka_out or (kafka_out is None and settings.source == "kafka")
    )


def _resume(snapshot: bytes | None, step: str) -> Any:
    """A stateful step's state from its recovery snapshot; one that cannot be loaded (written
    by an incompatible version) starts afresh with a log line instead of a crash loop."""
    if not snapshot:
        return None
    try:
        return pickle.loads(snapshot)
    except Exception as exc:
        metrics.STATE_REWARMS.labels("unreadable").inc()
        log.warning("%s: a recovery snapshot could not be loaded (%s: %s); that key starts "
                    "afresh", step, type(exc).__name__, str(exc)[:200])  # fmt: skip
        return None


def _is_reading(x: Reading | DeadLetter) -> TypeGuard[Reading]:
    return isinstance(x, Reading)


def _is_scored(kv: tuple[str, Scored | DeadLetter]) -> TypeGuard[tuple[str, Scored]]:
    return isinstance(kv[1], Scored)


def _key(item: Any) -> str:
    return getattr(item, "equipment_id", None) or "-"


def _embedded_output(settings: Settings) -> Sink[Any] | None:
    kind, _, arg = settings.output.partition(":")
    if kind == "console":
        return ConsoleSink()
    if kind == "jsonl":
        return JsonlSink(arg)
    return None


def main_flow() -> Dataflow:
    """The flow ``python -m bytewax.run flows.main`` runs: settings from the environment.

    A bad configuration, model or database URL stops start-up with one line on stderr and
    exit code 2; no message printed here carries a secret (values are left out of settings
    errors, and every secret setting is masked in the others)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import psycopg
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from connectors.model_store import ModelLoadError
    from connectors.settings import describe_error
    from models.logsafe import redact
    from models.rul import ModelMismatchError

    secrets: list[str] = []
    try:
        settings = load_settings()
        secrets = settings.secret_values()
        model_ready = _serve_health(settings)
        flow = build_flow(settings)
        model_ready.set()
        return flow
    except (ValidationError, SettingsError) as exc:
        print(f"flows.main: cannot start: {describe_error(exc)}", file=sys.stderr)
    except (ModelLoadError, ModelMismatchError, OSError, ValueError, psycopg.Error) as exc:
        message = redact(f"{type(exc).__name__}: {exc}", secrets)
        print(f"flows.main: cannot start: {message}", file=sys.stderr)
    except Exception as exc:  # a bug: keep the traceback, masked
        import traceback

        text = "".join(traceback.format_exception(exc))
        print(f"flows.main: cannot start:\n{redact(text, secrets)}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(2)


def _serve_health(settings: Settings) -> Any:
    """Start ``/metrics``, ``/healthz`` and ``/readyz`` when ``PM_METRICS_PORT`` is set;
    returns the event that marks the model as loaded (readiness waits for it)."""
    import threading

    model_ready = threading.Event()
    if settings.metrics_port is None:
        return model_ready
    from connectors import health

    server = health.HealthServer(settings.metrics_address, settings.metrics_port)
    loaded = f"model loaded: {settings.model}" if settings.model != "none" else "no model (none)"
    server.add_check(
        "model", lambda: (True, loaded) if model_ready.is_set() else (False, "starting")
    )
    server.add_check("sinks", health.sinks_check)
    if settings.database_url is not None:
        server.add_check(
            "postgres", health.postgres_check(settings.database_url.get_secret_value())
        )
    if settings.redis_url is not None:
        server.add_check("redis", health.redis_check(settings.redis_url.get_secret_value()))
    server.start()
    return model_ready
