"""Referral settings: env vars with the ``REFERRAL_`` prefix; business defaults from the contract."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class ReferralSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="REFERRAL_", extra="ignore", validate_by_name=True,
                                      validate_by_alias=True)
    service_name: ClassVar[str] = "referral"
    default_port: ClassVar[int] = 8001
