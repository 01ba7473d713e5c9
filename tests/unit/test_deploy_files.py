"""docker-compose.yml cannot run here (no Docker engine); keep it true to the settings by parsing it."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.groupbuy.settings import GroupbuySettings
from services.referral.settings import ReferralSettings
from services.rewards.settings import RewardsSettings
from shared.events.catalog import TOPICS, dlq_topic

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_kafka_mongo_and_the_three_services():
    services = compose()["services"]
    assert {"kafka", "mongo", "referral", "groupbuy", "rewards"} <= set(services)
    assert "--replSet" in services["mongo"]["command"], "MongoDB runs as a single-node replica set"
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller", "KRaft"


def test_each_service_gets_the_settings_it_reads():
    services = compose()["services"]
    for name, settings_cls in (("referral", ReferralSettings), ("groupbuy", GroupbuySettings),
                               ("rewards", RewardsSettings)):
        service = services[name]
        env = service["environment"]
        port = settings_cls().default_port
        assert env[f"{name.upper()}_PORT"] == port
        assert service["ports"] == [f"{port}:{port}"]
        assert service["command"] == [name]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["MONGODB_URI"].startswith("mongodb://mongo:27017")
        assert env["PINWHEEL_ENV"] == "production" and "PINWHEEL_JWT_PUBLIC_KEY" in env
        assert f"{port}/readyz" in " ".join(service["healthcheck"]["test"])
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (ROOT / service["build"]["dockerfile"]).exists()


def test_every_topic_and_its_dlq_is_created():
    script = " ".join(compose()["services"]["kafka-init"]["command"])
    for topic in TOPICS:
        assert topic in script and dlq_topic(topic) in script
