"""Binding rules: each refusal and each fraud flag is one small pure function of plain values.

``refusal_for`` applies the refusals in a fixed order (so the reason given is stable), and
``flags_for`` collects every flag rule that fires. No I/O: the service layer gathers the facts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class Refusal(StrEnum):
    UNKNOWN_CODE = "unknown_code"
    SELF_INVITE = "self_invite"
    ALREADY_BOUND = "already_bound"
    NOT_REGISTERED = "not_registered"
    WINDOW_PASSED = "window_passed"
    ALREADY_ORDERED = "already_ordered"
    INVITER_DEVICE = "inviter_device"
    WOULD_MAKE_CYCLE = "would_make_cycle"


class Flag(StrEnum):
    DAILY_LIMIT = "daily_binding_limit"
    SHARED_DEVICE = "shared_device"
    SHARED_IP = "shared_ip"


REFUSAL_MESSAGES: dict[Refusal, str] = {
    Refusal.UNKNOWN_CODE: "no referral code like this exists",
    Refusal.SELF_INVITE: "you cannot use your own referral code",
    Refusal.ALREADY_BOUND: "you are already bound to an inviter",
    Refusal.NOT_REGISTERED: "your registration has not reached the referral service yet; try again shortly",
    Refusal.WINDOW_PASSED: "referral codes can only be entered within the first days after registering",
    Refusal.ALREADY_ORDERED: "referral codes can only be entered before your first completed order",
    Refusal.INVITER_DEVICE: "this device belongs to the code's owner",
    Refusal.WOULD_MAKE_CYCLE: "the code's owner was invited by you (directly or through others)",
}


@dataclass(frozen=True)
class BindingPolicy:
    window: timedelta = timedelta(days=7)
    daily_limit: int = 20
    shared_device_threshold: int = 3
    shared_ip_threshold: int = 5


@dataclass(frozen=True)
class BindingFacts:
    """Everything the rules need about one attempt to bind ``invitee_id`` to ``inviter_id``."""

    invitee_id: str
    inviter_id: str | None  # None: the code is unknown
    bound_at: datetime  # the binding's time: registration time, or the request's time in the app
    registered_at: datetime | None  # None: we never saw the invitee's user.registered
    already_bound: bool = False
    earliest_order_at: datetime | None = None  # the invitee's earliest completed order known
    invitee_device: str | None = None
    inviter_device: str | None = None
    inviter_chain: Sequence[str] = ()  # the inviter's inviter, and theirs, ...


# ------------------------------------------------------------------ refusals


def is_self_invite(inviter_id: str, invitee_id: str) -> bool:
    return inviter_id == invitee_id


def window_passed(registered_at: datetime, bound_at: datetime, window: timedelta) -> bool:
    return bound_at - registered_at > window


def ordered_before(earliest_order_at: datetime | None, bound_at: datetime) -> bool:
    """Judged by event time: an order completed before the binding refuses it; one completed after
    it (even if its event arrived first) does not."""
    return earliest_order_at is not None and earliest_order_at < bound_at


def uses_inviter_device(inviter_device: str | None, invitee_device: str | None) -> bool:
    return inviter_device is not None and inviter_device == invitee_device


def would_make_cycle(invitee_id: str, inviter_id: str, inviter_chain: Sequence[str]) -> bool:
    """Binding invitee -> inviter closes a loop when the invitee is already up the inviter's chain."""
    return invitee_id == inviter_id or invitee_id in inviter_chain


def refusal_for(facts: BindingFacts, policy: BindingPolicy) -> Refusal | None:
    if facts.inviter_id is None:
        return Refusal.UNKNOWN_CODE
    if is_self_invite(facts.inviter_id, facts.invitee_id):
        return Refusal.SELF_INVITE
    if facts.already_bound:
        return Refusal.ALREADY_BOUND
    if facts.registered_at is None:
        return Refusal.NOT_REGISTERED
    if window_passed(facts.registered_at, facts.bound_at, policy.window):
        return Refusal.WINDOW_PASSED
    if ordered_before(facts.earliest_order_at, facts.bound_at):
        return Refusal.ALREADY_ORDERED
    if uses_inviter_device(facts.inviter_device, facts.invitee_device):
        return Refusal.INVITER_DEVICE
    if would_make_cycle(facts.invitee_id, facts.inviter_id, facts.inviter_chain):
        return Refusal.WOULD_MAKE_CYCLE
    return None


# ------------------------------------------------------------------ flags (review instead of reward)


def over_daily_limit(daily_slot: int, limit: int) -> bool:
    """``daily_slot`` is this binding's 1-based position among the inviter's bindings of the day."""
    return daily_slot > limit


def shares_with_many(other_invitees_sharing: int, threshold: int) -> bool:
    """This invitee and ``other_invitees_sharing`` others of one inviter use one device or ip."""
    return other_invitees_sharing + 1 >= threshold


def flags_for(*, daily_slot: int, others_on_device: int, others_on_ip: int, policy: BindingPolicy) -> list[Flag]:
    flags: list[Flag] = []
    if over_daily_limit(daily_slot, policy.daily_limit):
        flags.append(Flag.DAILY_LIMIT)
    if shares_with_many(others_on_device, policy.shared_device_threshold):
        flags.append(Flag.SHARED_DEVICE)
    if shares_with_many(others_on_ip, policy.shared_ip_threshold):
        flags.append(Flag.SHARED_IP)
    return flags
