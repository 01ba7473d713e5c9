"""Settings from the environment (pydantic-settings).

Infrastructure variables are shared by every service and named as in the contract
(``KAFKA_BOOTSTRAP_SERVERS``, ``MONGODB_URI``, ``PINWHEEL_JWT_SECRET`` …); everything a service
adds is read with its own prefix (``REFERRAL_``, ``GROUPBUY_``, ``REWARDS_``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Documented in the README; accepted only outside production mode.
LOCAL_DEV_JWT_SECRET = "pinwheel-local-dev-secret-change-me-0123456789"


def _env(name: str) -> AliasChoices:
    """A field read from a fixed environment variable, or by its own name in code."""
    return AliasChoices(name)


class ServiceSettings(BaseSettings):
    """What every service process needs. Subclasses set ``service_name`` and their env prefix."""

    model_config = SettingsConfigDict(extra="ignore", validate_by_name=True, validate_by_alias=True)

    service_name: ClassVar[str] = "pinwheel"
    default_port: ClassVar[int] = 8000

    environment: Literal["local", "test", "production"] = Field(
        "local", validation_alias=_env("PINWHEEL_ENV"),
        description="production refuses the local JWT secret and pretty console logs")
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS"))
    mongodb_uri: SecretStr = Field(SecretStr("mongodb://127.0.0.1:27017"), validation_alias=_env("MONGODB_URI"))
    topic_partitions: int = Field(
        4, ge=1, le=1024, validation_alias=_env("PINWHEEL_TOPIC_PARTITIONS"),
        description="partitions of a topic the service creates when it is missing (production pre-creates them)")
    topic_prefix: str = Field(
        "", validation_alias=_env("PINWHEEL_TOPIC_PREFIX"),
        description="prepended to every topic name; lets several isolated systems share one cluster (tests)")
    jwt_secret: SecretStr | None = Field(None, validation_alias=_env("PINWHEEL_JWT_SECRET"))
    jwt_secret_file: Path | None = Field(None, validation_alias=_env("PINWHEEL_JWT_SECRET_FILE"))
    jwt_public_key: SecretStr | None = Field(None, validation_alias=_env("PINWHEEL_JWT_PUBLIC_KEY"))
    jwt_public_key_file: Path | None = Field(None, validation_alias=_env("PINWHEEL_JWT_PUBLIC_KEY_FILE"))
    jwt_audience: str = Field("pinwheel", validation_alias=_env("PINWHEEL_JWT_AUDIENCE"))
    jwt_issuer: str | None = Field(None, validation_alias=_env("PINWHEEL_JWT_ISSUER"))
    log_level: str = Field("INFO", validation_alias=_env("PINWHEEL_LOG_LEVEL"))
    log_format: Literal["auto", "json", "console"] = Field("auto", validation_alias=_env("PINWHEEL_LOG_FORMAT"))

    # Per-service, read with the subclass's prefix.
    host: str = "127.0.0.1"
    port: int = 0
    mongodb_database: str = ""
    consumer_group: str = ""
    outbox_poll_seconds: float = 0.5
    consumer_max_attempts: int = Field(3, ge=1, description="tries of a failing handler before the DLQ")
    consumer_retry_backoff_seconds: float = 0.2
    consumer_batch_max_records: int = Field(1000, ge=1, description="records per poll, committed together")
    consumer_batch_timeout_ms: int = Field(
        10, ge=1, description="how long a poll waits for records (an idle poll also sleeps this long)")
    consumer_fetch_max_wait_ms: int = Field(
        50, ge=0, le=500, description="longest the broker holds a fetch that finds no records; aiokafka sends one "
        "fetch per broker at a time, without the partitions whose records are still being handled, so a fetch "
        "for idle topics only delays the busy ones by up to this long (aiokafka's default, 500, made a steady "
        "~0.5 s lag once a backlog formed)")
    consumer_concurrency: int = Field(
        256, ge=1, description="records of one round (one per key) handled at the same time when their type has "
        "no batch handler (their inserts share round trips); 1: one record at a time, no batches")
    consumer_recent_event_ids: int = Field(
        100_000, ge=0, description="ids of events this process handled lately, remembered so that a duplicate "
        "is skipped without touching the store (0: always handle again; effects are idempotent either way)")
    public_base_url: str = ""
    dry_run: bool = Field(False, description="read-only: writes and publishes are recorded, not made (ops replay)")

    @model_validator(mode="after")
    def _fill_defaults(self) -> ServiceSettings:
        if not self.port:
            self.port = self.default_port
        if not self.mongodb_database:
            self.mongodb_database = f"pinwheel_{self.service_name}"
        if not self.consumer_group:
            self.consumer_group = f"pinwheel-{self.service_name}"
        if not self.public_base_url:
            self.public_base_url = f"http://{self.host}:{self.port}"
        if self.jwt_secret is None and self.jwt_secret_file is not None:
            self.jwt_secret = SecretStr(self.jwt_secret_file.read_text().strip())
        if self.jwt_public_key is None and self.jwt_public_key_file is not None:
            self.jwt_public_key = SecretStr(self.jwt_public_key_file.read_text())
        if self.environment == "production":
            if self.jwt_public_key is None and (
                self.jwt_secret is None or self.jwt_secret.get_secret_value() == LOCAL_DEV_JWT_SECRET
            ):
                raise ValueError(
                    "production mode needs PINWHEEL_JWT_PUBLIC_KEY (RS256) or a non-default PINWHEEL_JWT_SECRET")
        elif self.jwt_secret is None and self.jwt_public_key is None:
            self.jwt_secret = SecretStr(LOCAL_DEV_JWT_SECRET)
        return self

    def topic(self, name: str) -> str:
        """The physical topic for a contract topic name."""
        return f"{self.topic_prefix}{name}"
