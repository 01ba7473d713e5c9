"""Group-buy settings: env vars with the ``GROUPBUY_`` prefix; business defaults from the contract."""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class GroupbuySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GROUPBUY_", extra="ignore", validate_by_name=True,
                                      validate_by_alias=True)
    service_name: ClassVar[str] = "groupbuy"
    default_port: ClassVar[int] = 8002
