"""Kubernetes manifests, Prometheus and Grafana files cannot run here (no cluster, no Docker engine);
keep them true to the settings, the metrics registry and each other by parsing them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from pydantic import AliasChoices

import shared.metrics
from services.groupbuy.settings import GroupbuySettings
from services.referral.settings import ReferralSettings
from services.rewards.settings import RewardsSettings
from shared.events.catalog import TOPICS, dlq_topic
from shared.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "pinwheel.json"

SERVICES: list[tuple[str, type[ServiceSettings]]] = [
    ("referral", ReferralSettings), ("groupbuy", GroupbuySettings), ("rewards", RewardsSettings)]
# Environment variables the manifests may set that no settings class reads.
NOT_SETTINGS = {"PINWHEEL_SERVICE"}  # the image's HEALTHCHECK picks the port with it
METRIC_NAME = re.compile(r"\bpinwheel_[a-z0-9_]+\b")
# The business counters the services export (deploy/grafana/METRICS.md is their list).
BUSINESS_METRICS = {
    "pinwheel_referral_bindings_total", "pinwheel_referral_qualifications_total",
    "pinwheel_referral_disqualifications_total", "pinwheel_referral_flags_total",
    "pinwheel_groupbuy_groups_opened_total", "pinwheel_groupbuy_groups_formed_total",
    "pinwheel_groupbuy_groups_failed_total", "pinwheel_groupbuy_seats_released_total",
    "pinwheel_rewards_coupons_issued_total", "pinwheel_rewards_coupons_redeemed_total",
    "pinwheel_rewards_coupons_revoked_total", "pinwheel_rewards_commission_amount_total",
    "pinwheel_rewards_budget_refusals_total",
}


# ------------------------------------------------------------------ helpers


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    documents = []
    for path in sorted(K8S.rglob("*.y*ml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append((path, document))
    return documents


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in k8s_documents() if doc.get("kind") == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind} {name!r}, found {len(found)}"
    return found[0]


def settings_env_names(settings_cls: type[ServiceSettings]) -> set[str]:
    """Every environment variable the settings class reads."""
    prefix = settings_cls.model_config.get("env_prefix", "")
    names: set[str] = set()
    for field_name, field in settings_cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice.upper() for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def only_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    return named[port]


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def registry_names() -> set[str]:
    """The sample names the metrics of shared/metrics.py expose."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                "gauge": ("",), "summary": ("", "_count", "_sum", "_created")}
    names: set[str] = set()
    for value in vars(shared.metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def metrics_md_names() -> set[str]:
    return set(METRIC_NAME.findall((GRAFANA / "METRICS.md").read_text()))


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def data_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        if panel.get("type") == "row":
            out.extend(data_panels(panel.get("panels", [])))
        else:
            out.append(panel)
    return out


def dashboard_expressions() -> list[str]:
    exprs = [target["expr"] for panel in data_panels(dashboard()["panels"]) for target in panel["targets"]]
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query.get("query", ""))
    return exprs


# ------------------------------------------------------------------ Kubernetes


def test_every_manifest_parses_and_is_listed_in_the_kustomization():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    for resource in resources:
        assert (K8S / resource).is_file(), resource
    manifests = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    # The Secret is a template of placeholders: created out of band, never applied from here.
    assert set(resources) == manifests - {"secret.template.yaml"}
    namespace = k8s_object("Namespace", kustomization["namespace"])
    assert namespace["apiVersion"] == "v1"
    for path, document in k8s_documents():
        assert {"apiVersion", "kind"} <= set(document), path
        if document["kind"] not in ("Kustomization", "Namespace"):
            assert document["metadata"]["name"], path
            assert document["metadata"].get("namespace", kustomization["namespace"]) == kustomization["namespace"]


def test_configmap_and_secret_template_hold_settings_only():
    config = k8s_object("ConfigMap", "pinwheel-config")["data"]
    shared_names = settings_env_names(ServiceSettings)
    assert set(config) <= shared_names, set(config) - shared_names
    assert config["PINWHEEL_ENV"] == "production"
    assert config["PINWHEEL_LOG_FORMAT"] == "json"
    assert config["KAFKA_BOOTSTRAP_SERVERS"]
    assert not {"MONGODB_URI", "PINWHEEL_JWT_PUBLIC_KEY", "PINWHEEL_JWT_SECRET"} & set(config), "secrets"
    secret = k8s_object("Secret", "pinwheel-secrets")
    assert set(secret["stringData"]) == {"MONGODB_URI", "PINWHEEL_JWT_PUBLIC_KEY"}
    assert "replicaSet=" in secret["stringData"]["MONGODB_URI"]
    assert all("CHANGE-ME" in value for value in secret["stringData"].values()), "placeholders only"


@pytest.mark.parametrize(("name", "settings_cls"), SERVICES)
def test_deployment_runs_the_service_with_probes_resources_and_no_root(name, settings_cls):
    port = settings_cls.default_port
    assert settings_cls.service_name == name
    deployment = k8s_object("Deployment", name)
    assert deployment["apiVersion"] == "apps/v1"
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    container = only_container(deployment)
    assert container["image"] == "pinwheel:latest"
    assert container["args"] == [name], "the image's ENTRYPOINT is `pinwheel serve`"
    assert "command" not in container
    assert [p["containerPort"] for p in container["ports"]] == [port]

    for probe_name, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"),
                             ("startupProbe", "/healthz")):
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == path, probe_name
        assert resolve_port(container, probe["port"]) == port, probe_name

    resources = container["resources"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[bound]), bound

    pod_security = pod["spec"]["securityContext"]
    container_security = container["securityContext"]
    for security in (pod_security, container_security):
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == 10001, "the image's pinwheel user"
    assert container_security["readOnlyRootFilesystem"] is True
    assert container_security["allowPrivilegeEscalation"] is False
    assert container_security["capabilities"]["drop"] == ["ALL"]
    mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
    assert "/tmp" in mounts, "a writable /tmp on the read-only root filesystem"

    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize(("name", "settings_cls"), SERVICES)
def test_deployment_env_names_are_the_settings_it_reads(name, settings_cls, monkeypatch):
    container = only_container(k8s_object("Deployment", name))
    known = settings_env_names(settings_cls) | NOT_SETTINGS
    env = {item["name"]: item for item in container["env"]}
    assert set(env) <= known, f"not read by {settings_cls.__name__}: {set(env) - known}"
    prefix = name.upper()
    assert env[f"{prefix}_HOST"]["value"] == "0.0.0.0"
    assert env[f"{prefix}_PORT"]["value"] == str(settings_cls.default_port)
    assert env["PINWHEEL_SERVICE"]["value"] == name

    config = k8s_object("ConfigMap", "pinwheel-config")
    assert [source["configMapRef"]["name"] for source in container["envFrom"]] == [config["metadata"]["name"]]
    secret = k8s_object("Secret", "pinwheel-secrets")
    for secret_name in ("MONGODB_URI", "PINWHEEL_JWT_PUBLIC_KEY"):
        ref = env[secret_name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]

    # The environment the pod gets (secret placeholders included) makes valid production settings.
    values = dict(config["data"])
    for item in env.values():
        if "value" in item:
            values[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            values[item["name"]] = secret["stringData"][ref["key"]]
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    settings = settings_cls()
    assert settings.environment == "production"
    assert (settings.host, settings.port) == ("0.0.0.0", settings_cls.default_port)
    assert settings.kafka_bootstrap_servers == config["data"]["KAFKA_BOOTSTRAP_SERVERS"]
    assert settings.jwt_public_key is not None


@pytest.mark.parametrize(("name", "settings_cls"), SERVICES)
def test_service_pdb_and_hpa_point_at_the_deployment(name, settings_cls):
    deployment = k8s_object("Deployment", name)
    container = only_container(deployment)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    service = k8s_object("Service", name)
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == settings_cls.default_port == container["ports"][0]["containerPort"]
    assert resolve_port(container, port["targetPort"]) == container["ports"][0]["containerPort"]

    pdb = k8s_object("PodDisruptionBudget", name)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    hpa = k8s_object("HorizontalPodAutoscaler", name)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a drain can always evict one pod"
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["resource"]["target"]["type"] == "Utilization"


def test_scaling_notes_list_every_topic_and_its_dlq():
    readme = (K8S / "README.md").read_text()
    for topic in TOPICS:
        assert f"`{topic}`" in readme and f"`{dlq_topic(topic)}`" in readme, topic
    for phrase in ("partition", "replica set", "outbox relay", "HTTP scales freely"):
        assert phrase in readme, phrase


def test_hpa_ceiling_is_the_partition_count_compose_creates():
    script = " ".join(compose()["services"]["kafka-init"]["command"])
    found = re.search(r"--partitions (\d+)", script)
    assert found, "kafka-init creates the topics with an explicit partition count"
    partitions = int(found.group(1))
    for name, _ in SERVICES:
        assert k8s_object("HorizontalPodAutoscaler", name)["spec"]["maxReplicas"] == partitions


# ------------------------------------------------------------------ Grafana


def test_dashboard_parses_and_every_panel_has_a_query():
    board = dashboard()
    assert board["uid"] and board["title"]
    panels = data_panels(board["panels"])
    assert len(panels) >= 10
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["title"], panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert target["expr"].count("{") == target["expr"].count("}"), target["expr"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_metric_names_are_registered_or_listed():
    known = registry_names() | metrics_md_names()
    used = {name for expr in dashboard_expressions() for name in METRIC_NAME.findall(expr)}
    assert used, "the dashboard queries pinwheel metrics"
    assert used <= known, f"neither in shared/metrics.py nor in METRICS.md: {sorted(used - known)}"
    for expr in dashboard_expressions():
        assert METRIC_NAME.search(expr), expr


def test_dashboard_shows_the_funnel_and_the_technical_health():
    used = {name for expr in dashboard_expressions() for name in METRIC_NAME.findall(expr)}
    assert metrics_md_names() >= BUSINESS_METRICS, BUSINESS_METRICS - metrics_md_names()
    assert used >= BUSINESS_METRICS, f"funnel counters missing: {BUSINESS_METRICS - used}"
    health = {"pinwheel_http_requests_total", "pinwheel_http_request_seconds_bucket",
              "pinwheel_events_consumed_total", "pinwheel_events_dead_lettered_total",
              "pinwheel_handler_seconds_bucket", "pinwheel_outbox_backlog", "pinwheel_consumer_lag"}
    assert health <= used, health - used
    exprs = "\n".join(dashboard_expressions())
    for outcome in ("handled", "retried", "dead_lettered"):
        assert f'outcome="{outcome}"' in exprs
    for kind in ("credited", "reversed", "withdrawn"):
        assert f'kind="{kind}"' in exprs
    for quantile in ("histogram_quantile(0.5,", "histogram_quantile(0.99,"):
        assert quantile in exprs


# ------------------------------------------------------------------ Prometheus and compose


def test_prometheus_scrapes_the_three_services_at_their_compose_ports():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    services = compose()["services"]
    targets = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                targets[target] = job.get("metrics_path", "/metrics")
    for name, settings_cls in SERVICES:
        port = services[name]["environment"][f"{name.upper()}_PORT"]
        assert port == settings_cls.default_port
        assert targets.get(f"{name}:{port}") == "/metrics", name


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (relative to the repo) of a compose service's bind mounts."""
    mounts = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = source[2:]
    return mounts


def test_compose_runs_prometheus_and_grafana_with_the_provisioning_files():
    services = compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["image"].startswith("prom/prometheus")
    assert grafana["image"].startswith("grafana/grafana")
    assert prometheus["ports"] == ["9090:9090"] and grafana["ports"] == ["3000:3000"]

    prometheus_mounts = bind_mounts(prometheus)
    config_flag = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    assert prometheus_mounts[config_flag.split("=", 1)[1]] == "deploy/prometheus/prometheus.yml"

    grafana_mounts = bind_mounts(grafana)
    for host_path in grafana_mounts.values():
        assert (ROOT / host_path).exists(), host_path
    for host_path in prometheus_mounts.values():
        assert (ROOT / host_path).exists(), host_path
    by_source = {source: target for target, source in grafana_mounts.items()}
    datasources_dir = by_source["deploy/grafana/provisioning/datasources"]
    dashboards_dir = by_source["deploy/grafana/provisioning/dashboards"]
    assert datasources_dir == "/etc/grafana/provisioning/datasources"
    assert dashboards_dir == "/etc/grafana/provisioning/dashboards"

    datasources = [yaml.safe_load(p.read_text()) for p in (GRAFANA / "provisioning/datasources").glob("*.y*ml")]
    (datasource,) = [d for file in datasources for d in file["datasources"]]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    providers = [yaml.safe_load(p.read_text()) for p in (GRAFANA / "provisioning/dashboards").glob("*.y*ml")]
    (provider,) = [p for file in providers for p in file["providers"]]
    assert provider["options"]["path"] == by_source["deploy/grafana/dashboards"], "the dashboards are mounted there"
    assert DASHBOARD.is_file()

    variable = next(v for v in dashboard()["templating"]["list"] if v["type"] == "datasource")
    assert variable["current"]["value"] == datasource["uid"], "the dashboard opens on the provisioned source"
