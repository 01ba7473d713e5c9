"""The coupon state machine (pure).

A coupon's state is the fold of its transitions (``code:version``, appended by insert). Stored
statuses are available, reserved, redeemed and revoked; ``expired`` and the lapse of an
unconfirmed reservation are derived from the time at read. ``history`` remembers which
(action, order/event) already happened, so a redelivered or replayed event never applies twice,
even after the coupon went back to an earlier status (redeemed, refunded, then replayed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

StoredStatus = Literal["available", "reserved", "redeemed", "revoked"]
Status = Literal["available", "reserved", "redeemed", "expired", "revoked"]
Action = Literal["reserve", "release", "confirm", "revoke", "restore"]


@dataclass(frozen=True)
class Coupon:
    code: str
    user_id: str
    kind: str
    value: int
    threshold: int
    issued_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class CouponState:
    version: int = 0
    status: StoredStatus = "available"
    order_id: str | None = None  # the reservation's or redemption's order
    reserved_at: datetime | None = None
    history: tuple[str, ...] = ()


@dataclass(frozen=True)
class Transition:
    """What to append: ``version`` is the state's version + 1."""

    action: Action
    version: int
    state: CouponState
    order_id: str | None
    at: datetime
    reason: str | None = None


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str


@dataclass(frozen=True)
class NoChange:
    """The request is already in effect (a retry): nothing to append."""

    state: CouponState


Decision = Transition | Refusal | NoChange


def reservation_lapsed(state: CouponState, now: datetime, reservation_ttl: timedelta) -> bool:
    return (state.status == "reserved" and state.reserved_at is not None
            and now >= state.reserved_at + reservation_ttl)


def status_at(coupon: Coupon, state: CouponState, now: datetime, reservation_ttl: timedelta) -> Status:
    """What the holder sees now: expiry and lapsed reservations derived from the time."""
    if state.status in ("redeemed", "revoked"):
        return state.status
    if state.status == "reserved" and not reservation_lapsed(state, now, reservation_ttl):
        return "reserved"
    return "expired" if now >= coupon.expires_at else "available"


def _move(state: CouponState, action: Action, status: StoredStatus, order_id: str | None, at: datetime,
          ref: str | None = None, reason: str | None = None) -> Transition:
    new = CouponState(
        version=state.version + 1, status=status, order_id=order_id,
        reserved_at=at if status == "reserved" else None,
        history=state.history + ((ref,) if ref else ()),
    )
    return Transition(action, new.version, new, order_id, at, reason)


def reserve(coupon: Coupon, state: CouponState, *, user_id: str, order_id: str, order_amount: int,
            now: datetime, reservation_ttl: timedelta) -> Decision:
    if coupon.user_id != user_id:
        return Refusal(403, "coupon_not_owned", "this coupon belongs to another user")
    if state.status == "revoked":
        return Refusal(409, "coupon_revoked", "this coupon was revoked")
    if state.status == "redeemed":
        if state.order_id == order_id:
            return NoChange(state)
        return Refusal(409, "coupon_redeemed", "this coupon was already used by another order")
    if state.status == "reserved" and not reservation_lapsed(state, now, reservation_ttl):
        if state.order_id == order_id:
            return NoChange(state)
        return Refusal(409, "coupon_reserved", "this coupon is reserved for another order")
    if now >= coupon.expires_at:
        return Refusal(409, "coupon_expired", "this coupon has expired")
    if order_amount < coupon.threshold:
        return Refusal(422, "threshold_not_met",
                       f"this coupon needs an order of at least {coupon.threshold}")
    return _move(state, "reserve", "reserved", order_id, now)


def release(state: CouponState, *, order_id: str, now: datetime) -> Decision:
    """The checkout gives the coupon back (order abandoned); a repeated release succeeds again."""
    if state.status == "reserved" and state.order_id == order_id:
        return _move(state, "release", "available", None, now, ref=f"release:{order_id}", reason="released")
    if state.status == "redeemed" and state.order_id == order_id:
        return Refusal(409, "coupon_redeemed", "the order was completed; its coupon is redeemed")
    if f"release:{order_id}" in state.history:
        return NoChange(state)
    return Refusal(404, "reservation_not_found", "this coupon is not reserved for that order")


def release_lapsed(state: CouponState, now: datetime, reservation_ttl: timedelta) -> Decision:
    """The scheduler's release of a reservation left unconfirmed too long."""
    if not reservation_lapsed(state, now, reservation_ttl):
        return NoChange(state)
    return _move(state, "release", "available", None, now, ref=f"release:{state.order_id}",
                 reason="reservation_timeout")


def confirm(coupon: Coupon, state: CouponState, *, user_id: str, order_id: str, now: datetime,
            reservation_ttl: timedelta) -> Decision:
    """An ``order.completed`` listing the coupon: it was used by that order."""
    ref = f"confirm:{order_id}"
    if ref in state.history:
        return NoChange(state)
    if coupon.user_id != user_id:
        return Refusal(403, "coupon_not_owned", "the order's buyer does not own this coupon")
    if state.status == "redeemed":
        return Refusal(409, "coupon_redeemed", "this coupon was already used by another order")
    if state.status == "revoked":
        return Refusal(409, "coupon_revoked", "this coupon was revoked")
    if (state.status == "reserved" and state.order_id != order_id
            and not reservation_lapsed(state, now, reservation_ttl)):
        # held for another order right now: the checkout did not reserve it for this one
        return Refusal(409, "coupon_reserved", "this coupon is reserved for another order")
    return _move(state, "confirm", "redeemed", order_id, now, ref=ref)


def revoke(state: CouponState, *, cause: str, now: datetime, reason: str) -> Decision:
    """Take back an unused coupon (available or reserved); a redeemed one stays redeemed."""
    ref = f"revoke:{cause}"
    if ref in state.history or state.status == "revoked":
        return NoChange(state)
    if state.status == "redeemed":
        return Refusal(409, "coupon_redeemed", "a redeemed coupon cannot be revoked")
    return _move(state, "revoke", "revoked", None, now, ref=ref, reason=reason)


def restore(coupon: Coupon, state: CouponState, *, order_id: str, now: datetime) -> Decision:
    """A full refund of the order that redeemed it gives the coupon back, unless it has expired."""
    ref = f"restore:{order_id}"
    if ref in state.history:
        return NoChange(state)
    if state.status != "redeemed" or state.order_id != order_id:
        return Refusal(409, "not_redeemed_by_order", "the coupon was not redeemed by that order")
    if now >= coupon.expires_at:
        return Refusal(409, "coupon_expired", "the coupon expired; it is not given back")
    return _move(state, "restore", "available", None, now, ref=ref, reason="order_refunded")
