"""The deployment files agree with the code: docker-compose.yml, deploy/Dockerfile, Prometheus, Grafana, the collector
and .env.example. There is no Docker engine here, so the compose file is parsed and checked, not run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml
from typer.testing import CliRunner

from scalper.cli import app as cli_app
from scalper.serve import DEFAULT_PORTS, SERVICES, build_process
from services.executor.rules import PositionRules
from shared.settings import REPO_ROOT, Settings
from tests.conftest import need

COMPOSE = REPO_ROOT / "docker-compose.yml"
DEPLOY = REPO_ROOT / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"
# Settings and the executor's position rules: both are read from SCALPER_* variables.
FIELDS = {f"SCALPER_{name.upper()}" for name in (*Settings.model_fields, *PositionRules.model_fields)}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")
REQUIRED_SECRETS = {"RABBITMQ_PASSWORD", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "SCALPER_SERVICE_TOKEN", "SCALPER_SECRET_KEY"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


STANDBY_SUFFIX = "-standby"


def _served(compose: dict, *, standby: bool) -> dict[str, dict]:
    out = {}
    for name, svc in compose["services"].items():
        command = svc.get("command") or []
        if command[:1] == ["serve"] and name.endswith(STANDBY_SUFFIX) == standby:
            assert command[1] not in out, f"{name}: a second compose service for {command[1]} (a standby ends in {STANDBY_SUFFIX})"
            out[command[1]] = {"compose_name": name, **svc}
    return out


@pytest.fixture(scope="module")
def scalper_services(compose) -> dict[str, dict]:
    """The compose services that run `scalper serve <service>`, by the service they serve (standbys left out)."""
    return _served(compose, standby=False)


@pytest.fixture(scope="module")
def standby_services(compose) -> dict[str, dict]:
    """The standbys (`<name>-standby`): a second process of a service, by the service they serve."""
    return _served(compose, standby=True)


def _option(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def _resolve(value: str) -> str:
    """Compose interpolation with the defaults written in the file (`${VAR:-default}`); a required one (`${VAR:?why}`)
    as the value an operator would set."""
    return INTERPOLATION.sub(lambda m: f"set-{m.group(1).lower()}" if m.group(2) == "?" else (m.group(3) or ""), value)


def test_each_service_runs_scalper_serve_on_its_default_port(scalper_services):
    assert sorted(scalper_services) == sorted(SERVICES)
    for service, svc in scalper_services.items():
        command = svc["command"]
        port = DEFAULT_PORTS[service]
        assert _option(command, "--port") == str(port), f"{service}: --port should be {port}"
        assert _option(command, "--host") == "0.0.0.0", f"{service}: must listen beyond the container's loopback"
        published = [str(p).split(":")[-1] for p in svc.get("ports", [])] + [str(p) for p in svc.get("expose", [])]
        assert str(port) in published, f"{service}: port {port} is neither published nor exposed"
        health = " ".join(svc["healthcheck"]["test"])
        assert "/healthz" in health and str(port) in health, f"{service}: health check should ask its own /healthz"
        depends = svc["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["rabbitmq"]["condition"] == "service_healthy"
        assert depends["postgres"]["condition"] == "service_healthy"
    # Strategy workers scale: replicas, and no fixed host port or container name to clash.
    strategy = scalper_services["strategy"]
    assert strategy["deploy"]["replicas"] >= 2
    assert "ports" not in strategy and "container_name" not in strategy


def test_a_standby_executor_runs_the_same_command_with_the_same_settings(scalper_services, standby_services):
    """A second `scalper serve executor` is the standby that takes over an account when the active one dies (the
    single-active-consumer queues and the leader lock decide which one works): it must be the same process."""
    assert set(standby_services) == {"executor"}, "only the executor has a standby (strategy workers scale instead)"
    active, standby = scalper_services["executor"], standby_services["executor"]
    assert standby["command"] == active["command"]
    assert standby["environment"] == active["environment"]
    assert standby["image"] == active["image"] and standby["depends_on"] == active["depends_on"]
    assert standby["healthcheck"]["test"] == active["healthcheck"]["test"]
    assert _option(active["command"], "--account-id") is None, "both serve every active account"
    # The active one publishes 8003 on the host; the standby only inside the compose network, so they do not clash.
    assert not standby.get("ports") and str(DEFAULT_PORTS["executor"]) in [str(p) for p in standby["expose"]]
    assert "container_name" not in standby


def test_the_cli_offers_the_commands_the_compose_file_runs(scalper_services, standby_services, compose):
    runner = CliRunner()
    result = runner.invoke(cli_app, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    assert "--port" in result.output and "--host" in result.output
    for service, svc in [*scalper_services.items(), *standby_services.items()]:
        # The process each container runs can be built from the environment compose gives it (nothing connects yet).
        env = {k.removeprefix("SCALPER_").lower(): _resolve(str(v)) for k, v in svc["environment"].items() if v is not None}
        process = build_process(service, Settings(_env_file=None, **env))
        assert process.name == service
    assert compose["services"]["migrate"]["command"] == ["db", "upgrade"]
    assert runner.invoke(cli_app, ["db", "upgrade", "--help"]).exit_code == 0
    assert compose["services"]["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_infrastructure_services_are_there_with_health_checks(compose):
    services = compose["services"]
    assert "management" in services["rabbitmq"]["image"]
    assert services["postgres"]["image"].startswith("postgres")
    for name in ("rabbitmq", "postgres", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name
    assert {"otel-collector", "jaeger", "prometheus", "grafana"} <= set(services)
    # Quorum queues hold open files: the broker needs far more than the usual 1024 for hundreds of accounts.
    assert services["rabbitmq"]["ulimits"]["nofile"]["soft"] >= 65536


def test_every_scalper_variable_is_a_setting_and_its_value_parses(compose):
    used: set[str] = set()
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        values = {k: _resolve(str(v)) for k, v in env.items() if v is not None}
        used |= {k for k in env if k.startswith("SCALPER_")}
        unknown = {k for k in env if k.startswith("SCALPER_")} - FIELDS
        assert not unknown, f"{name}: not settings of shared.settings.Settings: {sorted(unknown)}"
        if any(k.startswith("SCALPER_") for k in env):
            # The values the container gets (with the file's defaults) are valid settings.
            kwargs = {k.removeprefix("SCALPER_").lower(): v for k, v in values.items() if k.startswith("SCALPER_")}
            Settings(_env_file=None, **kwargs)
    text = COMPOSE.read_text()
    interpolated = {m.group(1) for m in INTERPOLATION.finditer(text) if m.group(1).startswith("SCALPER_")}
    assert interpolated <= FIELDS, sorted(interpolated - FIELDS)
    assert {"SCALPER_BUS_URL", "SCALPER_DATABASE_URL", "SCALPER_OTLP_ENDPOINT", "SCALPER_LOG_FORMAT"} <= used


def test_services_reach_each_other_by_compose_names(compose, scalper_services):
    env = scalper_services["decision"]["environment"]
    names = set(compose["services"])
    for key, service in (("SCALPER_MARKET_DATA_URL", "market_data"), ("SCALPER_STRATEGY_URL", "strategy")):
        target = scalper_services[service]
        assert _resolve(env[key]) == f"http://{target['compose_name']}:{DEFAULT_PORTS[service]}"
    assert "@rabbitmq:5672/" in _resolve(env["SCALPER_BUS_URL"])
    assert _resolve(env["SCALPER_DATABASE_URL"]).startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in _resolve(env["SCALPER_DATABASE_URL"])
    otlp = _resolve(env["SCALPER_OTLP_ENDPOINT"])
    host, port = otlp.removeprefix("http://").split(":")
    assert host in names
    collector = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(f":{port}")
    exporter = next(iter(collector["exporters"].values()))
    assert exporter["endpoint"].split(":")[0] in names  # the trace store is a compose service
    assert set(collector["service"]["pipelines"]["traces"]["exporters"]) <= set(collector["exporters"])


def test_the_image_runs_the_scalper_script():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    entrypoints = re.findall(r"^ENTRYPOINT\s+(.+)$", dockerfile, re.M)
    assert entrypoints and json.loads(entrypoints[-1]) == ["scalper"]
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["scalper"] == "scalper.cli:app"
    for folder in ("shared", "services", "scalper"):
        assert re.search(rf"^COPY {folder} ", dockerfile, re.M), f"the image lacks {folder}/"


def test_prometheus_scrapes_every_service_at_its_compose_name_and_port(compose, scalper_services, standby_services):
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    targets: set[str] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets |= set(static["targets"])
        for sd in job.get("dns_sd_configs", []):
            targets |= {f"{name}:{sd['port']}" for name in sd["names"]}
    expected = {f"{svc['compose_name']}:{DEFAULT_PORTS[service]}"
                for served in (scalper_services, standby_services) for service, svc in served.items()}
    assert targets == expected  # the standbys too: a standby that took over is the one whose metrics matter
    # The rule file Prometheus loads is the one shipped, mounted where the config says.
    mounts = {m.split(":")[1]: m.split(":")[0] for m in compose["services"]["prometheus"]["volumes"] if m.startswith("./")}
    for rule_file in config["rule_files"]:
        assert (REPO_ROOT / mounts[rule_file]).resolve() == ALERTS_YML.resolve()
    assert (REPO_ROOT / mounts["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS_YML.resolve()


def test_grafana_provisions_the_dashboards_and_their_data_source(compose):
    volumes = compose["services"]["grafana"]["volumes"]
    mounts = {m.split(":")[1]: REPO_ROOT / m.split(":")[0] for m in volumes if m.startswith("./")}
    provisioning = mounts["/etc/grafana/provisioning"]
    sources = yaml.safe_load((provisioning / "datasources" / "datasources.yml").read_text())["datasources"]
    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())["providers"]
    dashboards_dir = mounts[providers[0]["options"]["path"]]
    prometheus = next(s for s in sources if s["type"] == "prometheus")
    assert prometheus["url"] == "http://prometheus:9090"
    files = sorted(dashboards_dir.glob("*.json"))
    assert {f.stem for f in files} >= {"pipeline", "trading", "services"}
    for f in files:
        dashboard = json.loads(f.read_text())
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == prometheus["uid"], f"{f.name}: {panel['title']}"


def test_env_example_lists_every_setting_and_nothing_else():
    text = (REPO_ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*(SCALPER_[A-Z0-9_]+)=", text, re.M))
    assert listed == FIELDS, f"missing: {sorted(FIELDS - listed)}; not settings: {sorted(listed - FIELDS)}"


def test_promtool_accepts_the_alert_rules():
    promtool = shutil.which("promtool")
    need(promtool is not None, "promtool is not installed (apt-get install prometheus)", required_by="SCALPER_REQUIRE_SERVICES")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS_YML)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = [r for g in yaml.safe_load(ALERTS_YML.read_text())["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {"KillSwitchTripped", "ExecutorBrokerDisconnected", "ExecutorRefusingOrders", "FeedStale", "DeadLettersGrowing"} <= names
    assert any("latency" in r["expr"] and "0.99" in r["expr"] for r in rules)


def test_promtool_accepts_the_prometheus_config(tmp_path):
    promtool = shutil.which("promtool")
    need(promtool is not None, "promtool is not installed (apt-get install prometheus)", required_by="SCALPER_REQUIRE_SERVICES")
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["rule_files"] = [str(ALERTS_YML)]  # the container path, here
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _host_ports(svc: dict) -> list[tuple[str, str]]:
    """(host interface, host port) of every port a service publishes ("" for every interface)."""
    out = []
    for spec in svc.get("ports") or []:
        parts = str(spec).split(":")
        host = parts[0] if len(parts) == 3 else ""
        out.append((host, parts[-2] if len(parts) > 1 else parts[0]))
    return out


def test_compose_requires_its_secrets_from_the_environment():
    text = COMPOSE.read_text()
    found = {m.group(1): m.group(2) for m in INTERPOLATION.finditer(text) if m.group(1) in REQUIRED_SECRETS}
    assert set(found) == REQUIRED_SECRETS
    for m in INTERPOLATION.finditer(text):
        if m.group(1) in REQUIRED_SECRETS:
            assert m.group(2) == "?", f"${{{m.group(1)}}} must be required (${{{m.group(1)}:?...}}), not defaulted"
    assert "scalper:scalper" not in text and "-admin}" not in text


def test_compose_publishes_only_the_api_grafana_and_the_documented_management_uis(compose):
    published = {name: _host_ports(svc) for name, svc in compose["services"].items() if svc.get("ports")}
    everywhere = {(name, port) for name, ports in published.items() for host, port in ports if host in ("", "0.0.0.0")}
    assert everywhere == {("decision", "8000"), ("grafana", "3000")}
    loopback = {(name, port) for name, ports in published.items() for host, port in ports if host == "127.0.0.1"}
    assert loopback <= {("prometheus", "9090"), ("alertmanager", "9093"), ("rabbitmq", "15672"), ("jaeger", "16686")}
    header = COMPOSE.read_text().split("\nx-scalper-image")[0]
    for _, port in loopback:
        assert f"127.0.0.1:{port}" in header, f"the header documents the management UI on {port}"
    for internal in ("postgres", "market-data", "strategy", "executor", "executor-standby", "otel-collector"):
        assert internal not in published, f"{internal} must not be published on the host"
    assert "5672" not in [port for _, port in _host_ports(compose["services"]["rabbitmq"])]


def test_alertmanager_routes_every_alert_to_decisions_webhook_with_the_service_token(compose):
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    (receiver,) = config["receivers"]
    assert config["route"]["receiver"] == receiver["name"]
    (hook,) = receiver["webhook_configs"]
    decision = compose["services"]["decision"]["command"]
    assert hook["url"] == f"http://decision:{decision[decision.index('--port') + 1]}/api/v1/alerts/alertmanager"
    token_file = hook["http_config"]["authorization"]["credentials_file"]
    service = compose["services"]["alertmanager"]
    assert token_file in " ".join(service["command"]) and "SCALPER_SERVICE_TOKEN" in service["environment"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    rules = {r["alert"] for g in yaml.safe_load(ALERTS_YML.read_text())["groups"] for r in g["rules"]}
    assert {"ExecutorDown", "AlgoTradingOff", "KillSwitchTripped"} <= rules


def test_prometheus_runs_without_the_lifecycle_api(compose):
    assert not any("enable-lifecycle" in str(arg) for arg in compose["services"]["prometheus"]["command"])


def test_compose_gives_the_first_run_steps_of_a_distributed_install():
    header = COMPOSE.read_text().split("\nx-scalper-image")[0]
    for step in ("user create", "POST /api/v1/accounts", "bot setup"):
        assert step in header.replace("-X POST localhost:8000/api/v1/accounts", "POST /api/v1/accounts"), step
