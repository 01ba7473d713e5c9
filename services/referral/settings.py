"""Referral settings: env vars with the ``REFERRAL_`` prefix; business defaults from the contract."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class ReferralSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="REFERRAL_", extra="ignore", validate_by_name=True,
                                      validate_by_alias=True)
    service_name: ClassVar[str] = "referral"
    default_port: ClassVar[int] = 8001

    share_base_url: str = Field("https://pinwheel.example/r/", description="the code is appended to it")
    code_length: int = Field(8, ge=6, le=16, description="symbols per referral code (31-symbol alphabet)")
    binding_window_days: float = Field(7, gt=0, description="an invitee may bind within this many days of registering")
    qualifying_min_amount: int = Field(1, ge=0, description="minor units an order needs to qualify a referral")
    qualification_hold_days: float = Field(7, ge=0, description="a full refund within this hold disqualifies")
    high_fission_at: int = Field(3, ge=1, description="qualified invites for the high_fission_user milestone")
    fission_expert_at: int = Field(5, ge=1, description="qualified invites for the fission_expert milestone")
    daily_binding_limit: int = Field(20, ge=0, description="bindings per inviter per UTC day before flagging")
    shared_device_threshold: int = Field(3, ge=2, description="invitees of one inviter on one device_id -> flag")
    shared_ip_threshold: int = Field(5, ge=2, description="invitees of one inviter on one ip -> flag")
    cycle_max_depth: int = Field(100, ge=1, description="how far up the inviter chain the cycle check walks")
    leaderboard_size: int = Field(10, ge=1, le=100)
    # Per user and replica (a shared limit belongs to the gateway, see SECURITY.md).
    bind_rate_limit_per_minute: int = Field(
        10, ge=1, description="POST /v1/referrals per user per minute (code entry: stops brute-forcing codes)")
    code_rate_limit_per_minute: int = Field(10, ge=1, description="POST /v1/referral-codes per user per minute")
