"""compose.yaml, checked statically (no Docker engine here): the services, images, ports, volumes and
health checks a `docker compose up` relies on, no secrets in the file, and the agent's privileges:
exactly the capabilities and read-only kernel mounts it needs, not `privileged`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_services_and_images(compose: dict[str, Any]) -> None:
    s = compose["services"]
    assert set(s) == {"kafka", "clickhouse", "ingest", "agent", "grafana", "upstream-v1", "upstream-v2",
                      "router", "loadgen"}
    assert s["kafka"]["image"].startswith("apache/kafka:")
    assert s["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert s["grafana"]["image"].startswith("grafana/grafana:")
    for name, svc in s.items():
        img = svc.get("image", "")
        assert not img.endswith(":latest") and (":" in img or "build" in svc), f"{name}: pin the image"
        if "build" in svc:
            build = svc["build"]
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
    for name in ("ingest", "agent"):
        assert s[name]["build"]["dockerfile"] == "Dockerfile"
    assert s["ingest"]["command"][0] == "ingest" and s["agent"]["command"][0] == "agent"
    env = s["kafka"]["environment"]
    assert "broker" in env["KAFKA_PROCESS_ROLES"] and "controller" in env["KAFKA_PROCESS_ROLES"]  # KRaft
    assert "ZOOKEEPER" not in " ".join(env)
    assert s["grafana"]["environment"]["GF_INSTALL_PLUGINS"] == "grafana-clickhouse-datasource"
    # the demo's Go sources exist where the image builds them from
    assert (ROOT / "demo/loadgen/main.go").is_file()


def test_health_checks_and_order(compose: dict[str, Any]) -> None:
    s = compose["services"]
    for name, svc in s.items():
        hc = svc.get("healthcheck")
        assert hc and hc["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: no health check"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in s and cond == {"condition": "service_healthy"}, (name, dep)
    assert set(s["ingest"]["depends_on"]) == {"kafka", "clickhouse"}


def test_ports_and_volumes(compose: dict[str, Any]) -> None:
    s = compose["services"]
    for name, svc in s.items():
        for p in svc.get("ports", []):
            assert p.startswith("127.0.0.1:"), f"{name}: {p} should bind to localhost only"
    assert "127.0.0.1:3000:3000" in s["grafana"]["ports"]
    named = set(compose["volumes"])
    assert named == {"kafka-data", "clickhouse-data", "grafana-data"}
    used = {v.split(":")[0] for svc in s.values() for v in svc.get("volumes", []) if not v.startswith(("/", "."))}
    assert used == named
    g = s["grafana"]["volumes"]
    for src, dst in (("./grafana/provisioning/datasources", "/etc/grafana/provisioning/datasources"),
                     ("./grafana/provisioning/dashboards", "/etc/grafana/provisioning/dashboards"),
                     ("./grafana/dashboards", "/etc/grafana/dashboards/blindspot")):
        assert f"{src}:{dst}:ro" in g
        assert (ROOT / src).is_dir()
    prov = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/blindspot.yaml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/etc/grafana/dashboards/blindspot"


def test_agent_privileges(compose: dict[str, Any]) -> None:
    a = compose["services"]["agent"]
    assert not a.get("privileged"), "the agent gets named capabilities, not --privileged"
    assert a["pid"] == "host" and a["network_mode"] == "host"
    assert a["cap_drop"] == ["ALL"]
    assert set(a["cap_add"]) == {"BPF", "PERFMON", "SYS_RESOURCE", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"}
    mounts = {v.split(":")[0]: v for v in a["volumes"]}
    assert set(mounts) == {"/sys/kernel/btf", "/sys/kernel/tracing", "/lib/modules", "/usr/src"}
    assert all(v.endswith(":ro") for v in mounts.values()), "kernel mounts are read-only"
    assert a["ulimits"]["memlock"] == {"soft": -1, "hard": -1}
    assert "ports" not in a  # host network: nothing to publish
    text = (ROOT / "compose.yaml").read_text()
    block = text[text.index("  agent:"):text.index("  grafana:")]
    for cap in a["cap_add"]:  # each privilege says why
        assert re.search(rf"- {cap}\s+#", block), cap


def test_no_secrets_in_file(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert re.fullmatch(r"\$\{\w+(:\?[^}]*)?\}", str(value)), f"{name}: {key} must come from ${{VAR}}"
    text = (ROOT / "compose.yaml").read_text()
    assert "change-me" not in text
    assert (ROOT / ".env.example").is_file() and ".env" in (ROOT / ".gitignore").read_text().split()


def test_grafana_reads_through_a_read_only_clickhouse_user(compose: dict[str, Any]) -> None:
    import xml.etree.ElementTree as ET

    s = compose["services"]
    g = s["grafana"]["environment"]
    assert g["BLINDSPOT_CLICKHOUSE_USER"] == "grafana"
    assert g["BLINDSPOT_CLICKHOUSE_PASSWORD"].startswith("${BLINDSPOT_GRAFANA_CLICKHOUSE_PASSWORD")
    assert s["clickhouse"]["environment"]["CLICKHOUSE_USER"] != "grafana"  # ingest writes as another user
    src = "./deploy/clickhouse/users.d/grafana-reader.xml"
    assert f"{src}:/etc/clickhouse-server/users.d/grafana-reader.xml:ro" in s["clickhouse"]["volumes"]
    root = ET.parse(ROOT / src).getroot()  # noqa: S314 (our own file)
    user = root.find("users/grafana")
    assert user is not None
    assert user.find("password").get("from_env") == "BLINDSPOT_GRAFANA_CLICKHOUSE_PASSWORD"
    assert user.find("password").text is None  # no password in the file
    profile = root.find(f"profiles/{user.findtext('profile')}")
    assert profile is not None and profile.findtext("readonly") in ("1", "2")
    grants = [q.text for q in user.findall("grants/query")]
    assert grants == ["GRANT SELECT ON blindspot.*"]
    assert "BLINDSPOT_GRAFANA_CLICKHOUSE_PASSWORD" in s["clickhouse"]["environment"]


def test_kafka_listener_published_to_the_host_requires_authentication(compose: dict[str, Any]) -> None:
    s = compose["services"]
    env = s["kafka"]["environment"]
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    published = {p.split(":")[-1] for p in s["kafka"]["ports"]}
    listeners = {lst.split("://")[0]: lst.rsplit(":", 1)[1] for lst in env["KAFKA_LISTENERS"].split(",")}
    for name, port in listeners.items():
        if port in published:
            assert protocols[name].startswith("SASL_"), f"{name} is published on the host without authentication"
    assert protocols["HOST"] == "SASL_PLAINTEXT" and "9092" in published
    assert env["KAFKA_LISTENER_NAME_HOST_SASL_ENABLED_MECHANISMS"] == "PLAIN"
    jaas = env["KAFKA_LISTENER_NAME_HOST_PLAIN_SASL_JAAS_CONFIG"]
    assert re.search(r'user_agent="\$\{BLINDSPOT_KAFKA_AGENT_PASSWORD(:\?[^}]*)?\}"', jaas), jaas
    agent = s["agent"]["environment"]
    assert agent["BLINDSPOT_RDKAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert agent["BLINDSPOT_RDKAFKA_SASL_USERNAME"] == "agent"
    assert agent["BLINDSPOT_RDKAFKA_SASL_PASSWORD"].startswith("${BLINDSPOT_KAFKA_AGENT_PASSWORD")
    example = (ROOT / ".env.example").read_text()
    for var in ("BLINDSPOT_GRAFANA_CLICKHOUSE_PASSWORD", "BLINDSPOT_KAFKA_AGENT_PASSWORD"):
        assert f"{var}=" in example


def test_the_image_holds_every_python_package() -> None:
    """The Dockerfile copies each package that pyproject.toml installs (a package missing there installs
    fine and fails at the first import inside the container)."""
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", (ROOT / "Dockerfile").read_text(), re.M))
    assert packages <= copied, packages - copied
