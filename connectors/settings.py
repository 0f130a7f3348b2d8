"""The flow's configuration: one frozen, typed object built once at start-up.

Precedence (highest first): ``PM_``-prefixed environment variables (nested fields with
``__``, e.g. ``PM_ALERTS__RUL_WARNING_HOURS=48``), the YAML file named by ``PM_CONFIG``,
then the defaults below. Secrets (database and Redis URLs, Apprise URLs, Kafka client
settings) are masked when printed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from alerting.rules import Thresholds

PROJECT_DIR = Path(__file__).resolve().parent.parent


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SimulatorSettings(_Section):
    """The built-in simulator used by ``PM_SOURCE=simulator``."""

    num_equipment: int = Field(16, ge=1)
    equipment_types: tuple[str, ...] = ("turbofan_engine", "pump")
    readings: int | None = Field(None, ge=1, description="per equipment; None = to failure")
    seed: int = 7
    healthy_fraction: float = Field(0.25, ge=0.0, le=1.0)
    faults: tuple[str, ...] = ()
    fault_rate: float = Field(0.0, ge=0.0, le=1.0)
    partitions: int = Field(2, ge=1, description="source partitions spread over workers")


class FeatureSettings(_Section):
    """Window features; must match what the model was trained with."""

    windows: tuple[int, ...] = (10, 30, 60)
    fft_enabled: bool = True
    fft_bands: int = Field(4, ge=1)
    operating_history: bool | None = Field(
        None, description="age / time-per-condition features; None: as the model was trained"
    )


class AnomalySettings(_Section):
    n_trees: int = Field(10, ge=1)
    height: int = Field(6, ge=1)
    window_size: int = Field(50, ge=2)
    warmup: int = Field(60, ge=2)
    calibration_size: int = Field(500, ge=10)
    hst_weight: float = Field(0.7, ge=0.0, description="River Half-Space Trees channel; 0: off")
    seed: int = 0


_T = Thresholds()  # the alert rules own the defaults


class AlertSettings(_Section):
    """Alert thresholds (see alerting.rules.Thresholds for their meaning)."""

    rul_warning_hours: float = _T.rul_warning_hours
    rul_critical_hours: float = _T.rul_critical_hours
    health_warning: float = _T.health_warning
    health_critical: float = _T.health_critical
    anomaly_warning: float = _T.anomaly_warning
    anomaly_critical: float = _T.anomaly_critical
    hysteresis: float = _T.hysteresis
    cooldown_s: float = _T.cooldown_s
    anomaly_min_consecutive: int = _T.anomaly_min_consecutive
    use_rul_lower_bound: bool = _T.use_rul_lower_bound
    resolve_dwell_s: float = _T.resolve_dwell_s


class DriftSettings(_Section):
    """Feature drift of live windows against the model's training reference (PSI)."""

    enabled: bool = True
    half_life: int = Field(2000, ge=10, description="rows; older windows weigh half as much")
    every_s: float = Field(300.0, gt=0, description="evaluate every this much event time")
    warning: float = Field(0.5, gt=0, description="max feature PSI that raises a warning")
    min_count: int = Field(2000, ge=1, description="rows seen before the first evaluation")
    sample_every: int = Field(1, ge=1, description="use 1 reading in N (by event time)")


class KafkaSettings(_Section):
    input_topic: str = "raw_sensor_data"
    predictions_topic: str = "predictions"
    alerts_topic: str = "alerts"
    dlq_topic: str = "raw_sensor_data.dlq"
    batch_size: int = Field(1000, ge=1)
    tail: bool = True
    output_enabled: bool | None = Field(
        None,
        description="write predictions/alerts/dead letters to Kafka (default: if source=kafka)",
    )
    input_partitions: int = Field(4, ge=1, description="partitions when the flow creates the topic")
    client_config: dict[str, SecretStr] = Field(
        default_factory=dict, description="librdkafka settings, e.g. SASL/SSL (secret)"
    )


class InputLimits(_Section):
    """What one reading may be; beyond these bounds it becomes a dead letter."""

    max_message_bytes: int = Field(256 * 1024, ge=1024)
    max_sensors: int = Field(512, ge=1, description="sensors (and settings) per reading")
    max_abs_value: float = Field(1e12, gt=0, description="largest |sensor value| accepted")
    max_future_skew_s: float | None = Field(
        86400.0, ge=0, description="how far ahead of the wall clock ts may be; None: no bound"
    )
    max_past_skew_s: float | None = Field(
        None, ge=0, description="how far behind the wall clock ts may be; None: no bound"
    )
    max_equipment_per_process: int = Field(
        20_000,
        ge=1,
        description="machines with state in one process; new ids beyond it are "
        "dead-lettered until idle ones expire",
    )

    def parse_limits(self) -> Any:
        """The pure parser's :class:`~models.parsing.ParseLimits`."""
        from models.parsing import MAX_ID_LEN, ParseLimits

        ms = lambda s: None if s is None else round(s * 1000)  # noqa: E731
        return ParseLimits(
            max_bytes=self.max_message_bytes,
            max_sensors=self.max_sensors,
            max_name_len=MAX_ID_LEN,
            max_abs_value=self.max_abs_value,
            max_future_ms=ms(self.max_future_skew_s),
            max_past_ms=ms(self.max_past_skew_s),
        )


class PostgresSettings(_Section):
    buffer_size: int = Field(1000, ge=1)
    write_interval_seconds: float = Field(10.0, gt=0)
    migrate_on_start: bool = True
    partitions: int = Field(2, ge=1, description="writers (connections) per flow")
    statement_timeout_s: float = Field(
        60.0, gt=0, description="a sink statement running longer is cancelled and retried"
    )
    lock_timeout_s: float = Field(
        10.0, gt=0, description="waiting longer for a table lock is cancelled and retried"
    )


class AlertDeliverySettings(_Section):
    """Alert delivery: bounded sends off the hot path, durable retries (see README)."""

    timeout_s: float = Field(10.0, gt=0, description="Apprise connect and read timeout")
    retry_interval_s: float = Field(5.0, gt=0, description="first retry; doubles per attempt")
    max_backoff_s: float = Field(300.0, gt=0)
    max_attempts: int = Field(20, ge=1, description="then the delivery is abandoned (logged)")
    lease_s: float = Field(60.0, gt=0, description="an unconfirmed claim is retried after it")
    poll_interval_s: float = Field(1.0, gt=0, description="how often due retries are looked up")
    concurrency: int = Field(4, ge=1, description="sends in flight per process")
    close_grace_s: float = Field(5.0, ge=0, description="at shutdown, time to finish sends")

    @model_validator(mode="after")
    def _lease_covers_a_send(self) -> AlertDeliverySettings:
        if self.lease_s <= 2 * self.timeout_s:
            raise ValueError(
                f"alert_delivery.lease_s ({self.lease_s}) must exceed twice timeout_s "
                f"({self.timeout_s}): a send still running must not be claimed again"
            )
        return self


class Settings(BaseSettings):
    """Everything the flow needs to know, from defaults, ``PM_CONFIG`` YAML and ``PM_*``."""

    model_config = SettingsConfigDict(
        env_prefix="PM_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    source: str = "simulator"
    output: str = "console"
    model: str = str(PROJECT_DIR / "artifacts" / "model")
    mlflow_tracking_uri: str = f"sqlite:///{PROJECT_DIR / 'mlflow.db'}"
    update_interval_seconds: float = Field(300.0, gt=0)
    predict_every: int = Field(1, ge=1, description="predict every N readings per equipment")
    allowed_lateness_s: float = Field(3600.0, ge=0)
    idle_expiry_s: float = Field(7 * 24 * 3600.0, gt=0)
    maintenance_refresh_s: float = Field(
        30.0, gt=0, description="how often maintenance_events is re-read (re-baselining)"
    )
    health_anomaly_weight: float = Field(0.3, ge=0.0, le=1.0)
    kafka_brokers: str = "127.0.0.1:9092"
    database_url: SecretStr | None = None
    redis_url: SecretStr | None = None
    apprise_urls: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    metrics_port: int | None = Field(None, ge=0, le=65535, description="/metrics, /readyz")
    metrics_address: str = Field("127.0.0.1", description="bind address; 0.0.0.0 in a container")
    dead_letter_path: str | None = None

    simulator: SimulatorSettings = SimulatorSettings()
    features: FeatureSettings = FeatureSettings()
    anomaly: AnomalySettings = AnomalySettings()
    alerts: AlertSettings = AlertSettings()
    drift: DriftSettings = DriftSettings()
    kafka: KafkaSettings = KafkaSettings()
    postgres: PostgresSettings = PostgresSettings()
    alert_delivery: AlertDeliverySettings = AlertDeliverySettings()
    limits: InputLimits = InputLimits()

    @field_validator("apprise_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(u.strip() for u in value.split(",") if u.strip())
        return value

    @field_validator("database_url")
    @classmethod
    def _check_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from psycopg.conninfo import conninfo_to_dict

            try:
                conninfo_to_dict(value.get_secret_value())
            except Exception:
                # the value is a secret: name the variable, never echo it
                raise ValueError(
                    "not a valid PostgreSQL URL or key=value DSN "
                    "(e.g. postgresql://user:password@host:5432/db)"
                ) from None
        return value

    def secret_values(self) -> list[str]:
        """Every secret setting's value, to mask in messages that might echo one."""
        from models.logsafe import secret_parts

        values = [
            p for v in (self.database_url, self.redis_url) if v
            for p in secret_parts(v.get_secret_value())
        ]  # fmt: skip
        values += [u.get_secret_value() for u in self.apprise_urls]
        values += [v.get_secret_value() for v in self.kafka.client_config.values()]
        return [v for v in values if v]

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        kind, _, arg = value.partition(":")
        if kind in ("simulator", "kafka") and not arg:
            return value
        if kind in ("cmapss", "jsonl") and arg:
            return value
        raise ValueError(
            f"source must be simulator, kafka, cmapss:PATH or jsonl:PATH; got {value!r}"
        )

    @field_validator("output")
    @classmethod
    def _check_output(cls, value: str) -> str:
        kind, _, arg = value.partition(":")
        if (kind == "console" and not arg) or (kind == "jsonl" and arg) or kind == "none":
            return value
        raise ValueError(f"output must be console, jsonl:PATH or none; got {value!r}")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_path = os.environ.get("PM_CONFIG")
        if yaml_path:
            if not Path(yaml_path).is_file():
                raise FileNotFoundError(f"PM_CONFIG names a missing file: {yaml_path}")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings once at start-up; keyword arguments win over everything."""
    return Settings(**overrides)


def describe_error(exc: Exception) -> str:
    """A settings error as one line per problem, without the offending values (pydantic
    would print them, and a mistyped variable may hold a password)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or '(settings)'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        return f"{exc.error_count()} invalid setting(s): " + "; ".join(problems)
    return f"{type(exc).__name__}: {exc}"
