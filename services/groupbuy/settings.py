"""Group-buy settings: env vars with the ``GROUPBUY_`` prefix; business defaults from the contract."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class GroupbuySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GROUPBUY_", extra="ignore", validate_by_name=True,
                                      validate_by_alias=True)
    service_name: ClassVar[str] = "groupbuy"
    default_port: ClassVar[int] = 8002

    # Business defaults (a campaign may set its own group/payment windows; these apply when it does not).
    group_window_minutes: int = Field(24 * 60, ge=1, le=30 * 24 * 60,
                                      description="how long a group stays open (default 24 h)")
    seat_payment_minutes: int = Field(15, ge=1, le=24 * 60,
                                      description="how long a taken seat waits for its payment (default 15 min)")
    # The scheduler (payment windows and group deadlines).
    scheduler_enabled: bool = Field(True, description="run the due-work loop in this process")
    scheduler_interval_seconds: float = Field(1.0, gt=0, le=600)
    scheduler_batch: int = Field(200, ge=1, le=10_000, description="due seats/groups handled per pass")
    # Per user and replica (a shared limit belongs to the gateway, see SECURITY.md).
    join_rate_limit_per_minute: int = Field(
        20, ge=1, description="group joins and opens (one window) per user per minute")
    list_groups_limit: int = Field(20, ge=1, le=200, description="groups returned by the open-groups list")
    settle_grace_seconds: float = Field(
        5.0, ge=0, le=600,
        description="the scheduler acts this long after a payment window or deadline, so payments "
                    "completed in time but still in flight on Kafka count")
