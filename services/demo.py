"""``pinwheel demo``: the product story against a RUNNING system, told step by step.

Alice gets a referral code; Bob registers with it (``user.registered`` on Kafka, as the user system
would send it) and gets his welcome pack; Bob's first order gives Alice a coupon; six more friends
make Alice a fission expert who earns commissions; a refund takes one back; Carol opens a group,
Dave and Erin join and pay, it forms at the 3-person tier and Carol gets her initiator coupon; a
second group (one-minute window) is left to fail at its deadline. Every user, order, group and
campaign id carries a short run id, so the story can run again and again on the same system.

``make run`` / ``make up`` call ``seed``: the same story, quietly, once per state directory, so
the APIs and the live page (``/live`` on the rewards service) are not empty.

Services are found on 127.0.0.1 at ``REFERRAL_PORT``/``GROUPBUY_PORT``/``REWARDS_PORT`` (8001-8003),
Kafka at ``KAFKA_BOOTSTRAP_SERVERS`` (127.0.0.1:9092), topics under ``PINWHEEL_TOPIC_PREFIX``; tokens
are signed with ``PINWHEEL_JWT_SECRET`` (the local dev secret by default).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaProducer

from shared.auth import issue_token
from shared.events.envelope import new_event_id
from shared.settings import LOCAL_DEV_JWT_SECRET

T = TypeVar("T")
Say = Callable[[str], None]

DEFAULT_PORTS = {"referral": 8001, "groupbuy": 8002, "rewards": 8003}


class DemoError(Exception):
    """A step did not happen in time (or a call was refused): what, and where to look."""


@dataclass(frozen=True)
class DemoConfig:
    urls: Mapping[str, str]
    bootstrap_servers: str
    topic_prefix: str = ""
    jwt_secret: str = LOCAL_DEV_JWT_SECRET
    run_id: str = field(default_factory=lambda: secrets.token_hex(2))
    step_timeout: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> DemoConfig:
        values = {**os.environ, **(env or {})}
        urls = {name: f"http://127.0.0.1:{values.get(f'{name.upper()}_PORT', str(port))}"
                for name, port in DEFAULT_PORTS.items()}
        config: dict[str, Any] = {
            "urls": urls, "bootstrap_servers": values.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            "topic_prefix": values.get("PINWHEEL_TOPIC_PREFIX", ""),
            "jwt_secret": values.get("PINWHEEL_JWT_SECRET", LOCAL_DEV_JWT_SECRET),
        }
        config.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**config)


@dataclass
class StoryResult:
    run_id: str
    users: dict[str, str]
    code: str
    group_id: str
    failing_group_id: str | None
    seconds: float
    funnel: dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def cny(minor: int) -> str:
    return f"{minor / 100:.2f} CNY"


class Story:
    def __init__(self, config: DemoConfig, say: Say) -> None:
        self.config = config
        self.say = say
        self.run = config.run_id
        names = ("alice", "bob", "carol", "dave", "erin", "frank", "grace",
                 *(f"friend{i}" for i in range(2, 8)))
        self.users = {name: f"{name}-{self.run}" for name in names}
        self.http = httpx.AsyncClient(timeout=10)
        self.producer: AIOKafkaProducer | None = None  # made inside the event loop (aiokafka needs one)

    # ------------------------------------------------------------ plumbing

    def _headers(self, user: str, scope: str = "") -> dict[str, str]:
        return {"Authorization": f"Bearer {issue_token(self.config.jwt_secret, user, scope, 3600)}"}

    async def call(self, service: str, method: str, path: str, user: str, scope: str = "",
                   expect: tuple[int, ...] = (200, 201), **kwargs: Any) -> Any:
        url = self.config.urls[service] + path
        try:
            response = await self.http.request(method, url, headers=self._headers(user, scope), **kwargs)
        except httpx.HTTPError as exc:
            raise DemoError(f"{service} at {self.config.urls[service]} does not answer ({exc!r}); "
                            "is the system running (`uv run pinwheel up`)?") from exc
        if response.status_code not in expect:
            raise DemoError(f"{method} {url} as {user}: {response.status_code} {response.text[:300]}")
        return response.json()

    async def produce(self, topic: str, key: str, event_type: str, step: str, data: dict[str, Any]) -> None:
        event = {"specversion": "1.0", "id": new_event_id("pinwheel-demo", self.run, step),
                 "source": "urn:pinwheel:demo", "type": event_type, "time": _now(),
                 "datacontenttype": "application/json", "data": data}
        assert self.producer is not None, "produce() inside tell()"
        await self.producer.send_and_wait(self.config.topic_prefix + topic, json.dumps(event).encode(),
                                          key=key.encode())

    async def until(self, what: str, check: Callable[[], Awaitable[T | None]]) -> T:
        deadline = time.monotonic() + self.config.step_timeout
        while True:
            found = await check()
            if found is not None and found is not False:
                return found
            if time.monotonic() > deadline:
                raise DemoError(f"waited {self.config.step_timeout:.0f}s for {what}; see the services' logs "
                                "(.local/<service>.log) and `uv run pinwheel ops lag`")
            await asyncio.sleep(0.3)

    async def register(self, name: str, **extra: Any) -> None:
        user = self.users[name]
        await self.produce("users.events", user, "user.registered", f"registered:{name}",
                           {"user_id": user, "registered_at": _now(), **extra})

    async def order(self, name: str, order_id: str, amount: int, **extra: Any) -> None:
        user = self.users[name]
        await self.produce("orders.events", user, "order.completed", f"order:{order_id}:{extra.get('group_id')}",
                           {"order_id": order_id, "user_id": user, "amount": amount, "currency": "CNY",
                            "completed_at": _now(), **extra})

    async def coupons(self, name: str) -> list[dict[str, Any]]:
        body = await self.call("rewards", "GET", "/v1/me/coupons", self.users[name])
        return list(body["coupons"])

    async def referrals(self) -> dict[str, Any]:
        body: dict[str, Any] = await self.call("referral", "GET", "/v1/me/referrals", self.users["alice"])
        return body

    async def ledger(self) -> dict[str, Any]:
        body: dict[str, Any] = await self.call("rewards", "GET", "/v1/me/commissions", self.users["alice"])
        return body

    # ------------------------------------------------------------ the story

    async def tell(self, failing_group: bool = True) -> StoryResult:
        started = time.monotonic()
        self.producer = AIOKafkaProducer(bootstrap_servers=self.config.bootstrap_servers, acks="all",
                                         enable_idempotence=True)
        try:
            try:
                await self.producer.start()
            except Exception as exc:
                raise DemoError(f"Kafka at {self.config.bootstrap_servers} does not answer ({exc!r})") from exc
            return await self._tell(started, failing_group)
        finally:
            await self.producer.stop()
            await self.http.aclose()

    async def _tell(self, started: float, failing_group: bool) -> StoryResult:
        u, say = self.users, self.say
        say(f"run {self.run}: users {u['alice']}, {u['bob']}, {u['carol']}, ... (ids end in -{self.run})")

        say("\n1. Alice signs up and asks for her referral code")
        await self.register("alice", device_id=f"dev-alice-{self.run}")
        code_body = await self.call("referral", "POST", "/v1/referral-codes", u["alice"])
        code = code_body["code"]
        say(f"   POST referral /v1/referral-codes -> code {code}, share URL {code_body['share_url']}")

        say("\n2. Bob registers with Alice's code")
        await self.register("bob", referral_code=code, device_id=f"dev-bob-{self.run}")
        say(f"   produced user.registered {{user_id: {u['bob']}, referral_code: {code}}} to "
            f"{self.config.topic_prefix}users.events")
        welcome = await self.until("Bob's welcome pack", lambda: self._at_least(self.coupons("bob"), 2))
        say("   referral bound Bob to Alice (referral.bound); rewards issued Bob's welcome pack:")
        for coupon in welcome:
            say("   - " + _describe(coupon))

        say("\n3. Bob places his first order (68.00 CNY) with his 20.00 CNY welcome coupon")
        coupon = next(c for c in welcome if c["kind"] == "amount_off")
        bob_order = f"o-bob-{self.run}"
        reserved = await self.call("rewards", "POST", f"/v1/coupons/{coupon['code']}/redemptions",
                                   f"checkout-{self.run}", "service",
                                   json={"order_id": bob_order, "user_id": u["bob"], "order_amount": 6800})
        say(f"   checkout reserved coupon {coupon['code']} for {bob_order} (until {reserved['reserved_until']})")
        await self.order("bob", bob_order, 4800, coupon_codes=[coupon["code"]])
        say(f"   produced order.completed {bob_order} (paid 48.00 CNY) to {self.config.topic_prefix}orders.events")
        alice_first = await self.until("Alice's inviter coupon", lambda: self._at_least(self.coupons("alice"), 1))
        say("   the referral qualified (referral.qualified); Alice's reward appeared:")
        say("   - " + _describe(alice_first[0]))
        used = await self.until("Bob's coupon redeemed", lambda: self._when(
            self.coupons("bob"), lambda cs: [c for c in cs if c["status"] == "redeemed"]))
        say(f"   and Bob's coupon {used[0]['code']} is now {used[0]['status']}")

        say("\n4. Six more friends register with Alice's code and order")
        friends = [f"friend{i}" for i in range(2, 8)]
        for friend in friends:
            await self.register(friend, referral_code=code, device_id=f"dev-{friend}-{self.run}")
        await self.until("six more invitees bound",
                         lambda: self._when(self.referrals(), lambda r: len(r["invitees"]) >= 7))
        # one order at a time: orders of different buyers may be handled in any order, and the story
        # needs friend 7 to be the 7th qualified invite (the one whose commission the refund takes back)
        for count, friend in enumerate(friends, start=2):
            await self.order(friend, f"o-{friend}-{self.run}", 5000)
            mine = await self.until(f"{count} qualified invites", self._qualified(count))
        say(f"   Alice: {mine['qualified_count']} qualified invites; milestones reached: "
            f"{', '.join(mine['milestones_reached'])}")
        ledger = await self.until("two commissions",
                                  lambda: self._when(self.ledger(), lambda lg: len(lg["entries"]) >= 2))
        say(f"   as a fission expert her 6th and 7th qualified invites earned commissions: "
            f"{', '.join(cny(e['amount']) + ' ' + e['status'] for e in reversed(ledger['entries']))}")
        say(f"   balances: {_balances(ledger['balances'])}")
        await self.until("seven inviter coupons", lambda: self._at_least(self.coupons("alice"), 7))
        say("   and seven 20.00 CNY inviter coupons")

        say("\n5. Friend 7's order is refunded in full within the hold")
        await self.produce("orders.events", u["friend7"], "order.refunded", "refund:friend7",
                           {"order_id": f"o-friend7-{self.run}", "user_id": u["friend7"], "refunded_amount": 5000,
                            "full": True, "refunded_at": _now()})
        say(f"   produced order.refunded o-friend7-{self.run} (full)")
        ledger = await self.until("the commission reversal",
                                  lambda: self._when(self.ledger(), lambda lg: len(lg["entries"]) >= 3))
        newest = ledger["entries"][0]
        say(f"   the referral was disqualified (referral.disqualified): {newest['kind']} {cny(newest['amount'])}; "
            f"balances now {_balances(ledger['balances'])}")
        revoked = await self.until("the inviter coupon revoked", lambda: self._when(
            self.coupons("alice"), lambda cs: [c for c in cs if c["status"] == "revoked"]))
        say(f"   and the inviter coupon it earned was revoked ({revoked[0]['code']})")

        say("\n6. Group buying: a tea campaign with tiers 2 people -> 20% off, 3 people -> 30% off")
        now = datetime.now(UTC)
        campaign_id = f"demo-tea-{self.run}"
        campaign = {"campaign_id": campaign_id, "sku": "oolong-250g", "product_name": "Oolong tea 250 g",
                    "list_price": 10000, "tiers": [{"size": 2, "percent_off": 20}, {"size": 3, "percent_off": 30}],
                    "starts_at": (now - timedelta(minutes=1)).isoformat(),
                    "ends_at": (now + timedelta(days=1)).isoformat(), "stock": 100}
        # 409: this run id's campaign exists already (a seed that stopped half-way is run again)
        await self.call("groupbuy", "POST", "/v1/campaigns", f"ops-{self.run}", "admin", expect=(201, 409),
                        json=campaign)
        say(f"   operator created campaign {campaign_id} (list price 100.00 CNY)")
        opened = await self.call("groupbuy", "POST", f"/v1/campaigns/{campaign_id}/groups", u["carol"])
        group_id = opened["group_id"]
        say(f"   Carol opened group {group_id} (deadline {opened['deadline']})")
        for member in ("dave", "erin"):
            joined = await self.call("groupbuy", "POST", f"/v1/groups/{group_id}/members", u[member])
            say(f"   {member.capitalize()} took a seat: {joined['seats_taken']} of {joined['max_seats']} taken")
        for member in ("carol", "dave", "erin"):
            await self.order(member, f"o-{member}-{self.run}", 7000, group_id=group_id)
        say("   all three paid 70.00 CNY (order.completed with the group_id)")
        formed = await self.until("the group to form", lambda: self._when(
            self.call("groupbuy", "GET", f"/v1/groups/{group_id}", u["carol"]),
            lambda g: g["status"] == "formed"))
        tier = formed["tier_reached"]
        say(f"   formed at the {tier['size']}-person tier ({tier.get('percent_off')}% off): every member pays "
            f"{cny(formed['price_now'])}")
        carol = await self.until("Carol's initiator coupon", lambda: self._at_least(self.coupons("carol"), 1))
        say("   Carol's initiator reward: " + _describe(carol[0]))

        failing_id = None
        if failing_group:
            say("\n7. A group that will fail: one-minute window, 3 people needed, only Frank pays")
            quick_id = f"demo-quick-{self.run}"
            quick = {"campaign_id": quick_id, "sku": "teapot", "list_price": 20000,
                     "tiers": [{"size": 3, "amount_off": 5000}], "group_window_minutes": 1, "seat_payment_minutes": 1,
                     "starts_at": (now - timedelta(minutes=1)).isoformat(),
                     "ends_at": (now + timedelta(days=1)).isoformat(), "stock": 10}
            await self.call("groupbuy", "POST", "/v1/campaigns", f"ops-{self.run}", "admin", expect=(201, 409),
                            json=quick)
            doomed = await self.call("groupbuy", "POST", f"/v1/campaigns/{quick_id}/groups", u["frank"])
            failing_id = doomed["group_id"]
            await self.call("groupbuy", "POST", f"/v1/groups/{failing_id}/members", u["grace"])
            await self.order("frank", f"o-frank-{self.run}", 15000, group_id=failing_id)
            say(f"   group {failing_id}: Frank paid, Grace holds a seat; at {doomed['deadline']} it fails and "
                "groupbuy.group_failed lists Frank's order for refund")

        funnel: dict[str, Any] = await self.call("rewards", "GET", "/v1/stats/funnel", f"ops-{self.run}", "admin")
        say("\nThe live funnel now (all runs on this system): " + _funnel_line(funnel))
        return StoryResult(self.run, dict(u), code, group_id, failing_id, time.monotonic() - started, funnel)

    def _qualified(self, count: int) -> Callable[[], Awaitable[dict[str, Any] | None]]:
        # ever qualified: a run of the same id resumed after its refund step finds one disqualified
        return lambda: self._when(self.referrals(), lambda r: sum(
            i["status"] in ("qualified", "disqualified") for i in r["invitees"]) >= count)

    @staticmethod
    async def _at_least(items: Awaitable[list[T]], count: int) -> list[T] | None:
        found = await items
        return found if len(found) >= count else None

    @staticmethod
    async def _when(value: Awaitable[T], check: Callable[[T], Any]) -> T | None:
        found = await value
        return found if check(found) else None


def _describe(coupon: dict[str, Any]) -> str:
    if coupon["kind"] == "free_shipping":
        what = "free shipping"
    else:
        threshold = f" orders of {cny(coupon['threshold'])}+" if coupon["threshold"] else ""
        what = f"{cny(coupon['value'])} off{threshold}"
    return f"{what} ({coupon['rule']}, {coupon['status']}, expires {coupon['expires_at'][:10]})"


def _balances(balances: dict[str, int]) -> str:
    return ", ".join(f"{k} {cny(v)}" for k, v in balances.items())


def _funnel_line(f: dict[str, Any]) -> str:
    r, g, c, m = f["referral"], f["groupbuy"], f["coupons"], f["commissions"]
    return (f"invites bound {r['bound']} -> qualified {r['qualified']} (- {r['disqualified']} disqualified); "
            f"groups opened {g['opened']} -> formed {g['formed']} / failed {g['failed']}; coupons issued "
            f"{c['issued']} / redeemed {c['redeemed']} / revoked {c['revoked']}; commissions credited "
            f"{cny(m['credited'])} / reversed {cny(m['reversed'])} / withdrawn {cny(m['withdrawn'])}")


def run_demo(config: DemoConfig, say: Say = print, failing_group: bool = True) -> StoryResult:
    return asyncio.run(Story(config, say).tell(failing_group))


def live_url(config: DemoConfig, ttl: int = 8 * 3600) -> str:
    return f"{config.urls['rewards']}/live?token={issue_token(config.jwt_secret, 'ops', 'admin', ttl)}"


def seed(env: dict[str, str]) -> None:
    """Demo data for ``make run`` / ``make up``: the story once, quietly, with the run id ``seed``
    (skipped when its last step, the failing group's campaign, exists: e.g. after a restart with
    the same state directory; a seed stopped half-way is completed, its events keep their ids)."""
    config = DemoConfig.from_env(env, run_id="seed")
    try:
        with httpx.Client(timeout=5) as client:
            last_step = client.get(config.urls["groupbuy"] + "/v1/campaigns/demo-quick-seed", headers={
                "Authorization": f"Bearer {issue_token(config.jwt_secret, 'ops', 'admin', 60)}"})
        if last_step.status_code == 200:
            print("[pinwheel] demo data: already loaded", flush=True)
            print(f"[pinwheel] live campaign page: {live_url(config)}", flush=True)
            return
        result = run_demo(config, say=lambda _: None)
    except Exception as exc:  # demo data is a convenience: never fail `up` because of it
        print(f"[pinwheel] demo data not loaded: {exc!r}", flush=True)
        return
    print(f"[pinwheel] demo data loaded in {result.seconds:.0f}s: " + _funnel_line(result.funnel), flush=True)
    print(f"[pinwheel] live campaign page: {live_url(config)}", flush=True)
