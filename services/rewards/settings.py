"""Rewards settings: env vars with the ``REWARDS_`` prefix; business defaults from the contract."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class RewardsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="REWARDS_", extra="ignore", validate_by_name=True,
                                      validate_by_alias=True)
    service_name: ClassVar[str] = "rewards"
    default_port: ClassVar[int] = 8003
