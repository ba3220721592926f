"""``docker-compose.yml`` and ``Dockerfile`` against the code: settings, sub-commands, Prometheus targets.

Docker cannot run here, so these checks read the files (PyYAML) and compare them with what the
code declares: every ``MINDSTREAM_*`` variable is a real ``Settings`` field, every worker command a
real ``mindstream`` sub-command, every scrape target a compose service on the right port.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, SecretStr

from workers.cli import build_parser
from workers.settings import KafkaSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS_DIR = ROOT / "ops" / "prometheus"

PREFIX = "MINDSTREAM_"
# The ports convention: /metrics of each worker kind (the gateway serves it on its HTTP port).
METRICS_PORTS = {"ingest": 9101, "refresh": 9102, "recall": 9103, "gateway": 8000}
METRICS_PORT_VARS = {
    "ingest": "MINDSTREAM_INGEST__METRICS_PORT",
    "refresh": "MINDSTREAM_REFRESH__METRICS_PORT",
    "recall": "MINDSTREAM_RECALL__METRICS_PORT",
    "gateway": "MINDSTREAM_HTTP__PORT",
}
# Settings sections that are announced but not merged yet: their variables are skipped ONLY while
# ``Settings.model_fields`` lacks the section, and checked strictly as soon as it exists.
PENDING_SECTIONS: set[str] = set()
# PENDING: sub-commands compose (or the docs) use that workers.cli does not have yet. While one is
# missing, its check is skipped with this reason; once build_parser() has it, it is checked strictly.
# Delete an entry when its command lands (test_pending_lists_are_current says when).
PENDING_SUBCOMMANDS: set[str] = set()
HEALTHCHECKED = {"kafka", "milvus", "etcd", "minio", "gateway", "prometheus", "alertmanager", "grafana"}
LONG_RUNNING_RESTARTS = {"unless-stopped", "on-failure", "always"}
PINNED_IMAGES = {
    "kafka": "apache/kafka",
    "kafka-init": "apache/kafka",
    "etcd": "quay.io/coreos/etcd",
    "minio": "quay.io/minio/minio",
    "milvus": "milvusdb/milvus",
    "prometheus": "prom/prometheus",
    "alertmanager": "prom/alertmanager",
    "grafana": "grafana/grafana",
    "kafka-jmx-agent": "maven",
}
# Milvus 3.x's WAL (Woodpecker, on MinIO) needs S3 conditional writes: MinIO RELEASE.2024-12-18T13-15-44Z or
# later (Milvus v3.0.x docs, "Woodpecker": object storage compatibility).
MINIO_MIN_RELEASE = "2024-12-18T13-15-44Z"
# Kafka's JMX exporter agent port (KAFKA_OPTS) = the port the "kafka" scrape job uses.
KAFKA_JMX_PORT = 9404
# Jobs of the parts we run on: job -> (compose service, port, metrics path).
INFRA_JOBS = {
    "milvus": ("milvus", 9091, "/metrics"),
    "etcd": ("etcd", 2379, "/metrics"),
    "minio": ("minio", 9000, "/minio/v2/metrics/cluster"),
    "alertmanager": ("alertmanager", 9093, "/metrics"),
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _mindstream_env(services: dict[str, dict[str, Any]]) -> Iterator[tuple[str, str, str]]:
    for name, service in services.items():
        for key, value in _env(service).items():
            if key.startswith(PREFIX):
                yield name, key, value


def _workers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services built from the project's Dockerfile (the ``mindstream`` image)."""
    return {name: s for name, s in services.items() if "build" in s}


def _field_path(var: str) -> list[str]:
    return var.removeprefix(PREFIX).lower().split("__")


def _resolve(var: str) -> str | None:
    """None if ``var`` names a field of ``Settings`` (nested via ``__``), else why not."""
    model: type[BaseModel] = Settings
    parts = _field_path(var)
    for depth, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            return f"{var}: {'.'.join(parts[: depth + 1])} is not a field of {model.__name__}"
        annotation = fields[part].annotation
        last = depth == len(parts) - 1
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if last and is_section:
            return f"{var}: {part} is a section, not a value"
        if not last:
            if not is_section or not isinstance(annotation, type):
                return f"{var}: {part} is a value, not a section"
            model = annotation
    return None


def _pending(var: str) -> bool:
    section = _field_path(var)[0]
    return section in PENDING_SECTIONS and section not in Settings.model_fields


# ------------------------------------------------------------------------------ settings


def test_mindstream_env_vars_are_settings_fields(services: dict[str, dict[str, Any]]) -> None:
    seen = list(_mindstream_env(services))
    assert seen, "no MINDSTREAM_* variables in docker-compose.yml"
    errors = [err for _, var, _ in seen if not _pending(var) and (err := _resolve(var))]
    assert not errors, "\n".join(sorted(set(errors)))


def test_resolve_rejects_what_settings_lacks() -> None:
    assert _resolve("MINDSTREAM_KAFKA__BOOTSTRAP_SERVERS") is None
    assert _resolve("MINDSTREAM_STATE_DIR") is None
    assert _resolve("MINDSTREAM_KAFKA__BOOTSTRAP") is not None
    assert _resolve("MINDSTREAM_KAFKA") is not None
    assert _resolve("MINDSTREAM_STATE_DIR__X") is not None
    assert _resolve("MINDSTREAM_NOPE__PORT") is not None


def _plain(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict | list):  # a JSON value in the environment
        return json.dumps(value)
    return str(value)


def _attr(settings: Settings, var: str) -> Any:
    value: Any = settings
    for part in _field_path(var):
        value = getattr(value, part)
    return value


def _settings_for(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, dict[str, str]]:
    """``Settings()`` as the service's container builds it (compose interpolations get a placeholder)."""
    env = {k: v for k, v in _env(service).items() if k.startswith(PREFIX) and not _pending(k)}
    for key in [k for k in os.environ if k.startswith(PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, "compose-interpolated" if "${" in value else value)
    return Settings(), env


@pytest.mark.parametrize("service", ["trainer", "ingest", "refresh", "recall", "gateway"])
def test_service_env_parses_into_settings(
    services: dict[str, dict[str, Any]], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The values validate (types, ranges) and land where the variable names say."""
    settings, env = _settings_for(services[service], monkeypatch)
    for key, value in env.items():
        if "${" not in value:
            assert _plain(_attr(settings, key)) == value, key


def test_production_values(services: dict[str, dict[str, Any]]) -> None:
    for name, service in _workers(services).items():
        env = _env(service)
        assert env.get("MINDSTREAM_KAFKA__BOOTSTRAP_SERVERS") == "kafka:9092", name
        assert env.get("MINDSTREAM_MILVUS__URI") == "http://milvus:19530", name
        assert env.get("MINDSTREAM_STATE_DIR") == "/var/lib/mindstream", name
        assert env.get("MINDSTREAM_KAFKA__SESSION_TIMEOUT_MS") == "45000", name
    kafka_env = _env(services["kafka"])
    assert "PLAINTEXT://kafka:9092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "milvus run standalone" in " ".join(services["milvus"]["command"])


@pytest.mark.parametrize("worker", ["ingest", "refresh", "recall", "gateway"])
def test_kafka_init_creates_the_settings_topics(
    services: dict[str, dict[str, Any]], worker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    init = services["kafka-init"]
    script = " ".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    created = set(re.findall(r"--topic\s+(\S+)", script))
    kafka = _settings_for(services[worker], monkeypatch)[0].kafka
    expected = {kafka.clicks_topic, kafka.clicks_dlq_topic, kafka.requests_topic, kafka.replies_topic}
    assert created == expected
    assert "/opt/kafka/bin/kafka-topics.sh" in script and "--if-not-exists" in script
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_compose_runs_the_embedded_broker_version(services: dict[str, dict[str, Any]]) -> None:
    """Development, tests and production run one Kafka version."""
    version = KafkaSettings().embedded_version
    assert services["kafka"]["image"] == f"apache/kafka:{version}"
    assert services["kafka-init"]["image"] == f"apache/kafka:{version}"


# ------------------------------------------------------------------------------ images, restarts, health


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image"
        if "@sha256:" in image:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"
        assert re.search(r"\d", tag), f"{name}: tag {tag!r} is not a version"
        if "build" in service:
            assert image == f"mindstream:{version}", f"{name}: built image should be tagged with the project version"
        else:
            assert repo == PINNED_IMAGES[name], f"{name}: unexpected image {image!r}"


def _one_shots(services: dict[str, dict[str, Any]]) -> set[str]:
    """Services others wait for with ``service_completed_successfully``."""
    shots = set()
    for service in services.values():
        for dep, spec in (service.get("depends_on") or {}).items():
            if isinstance(spec, dict) and spec.get("condition") == "service_completed_successfully":
                shots.add(dep)
    return shots


def test_restart_policies(services: dict[str, dict[str, Any]]) -> None:
    one_shots = _one_shots(services)
    assert {"trainer", "kafka-init"} <= one_shots
    for name, service in services.items():
        restart = str(service.get("restart", "no"))
        if name in one_shots:
            assert restart in {"no", "on-failure"}, f"{name}: a one-shot must not restart after success"
        else:
            assert restart in LONG_RUNNING_RESTARTS, f"{name}: restart policy {restart!r}"


def test_health_checks(services: dict[str, dict[str, Any]]) -> None:
    waited_for = {
        dep
        for service in services.values()
        for dep, spec in (service.get("depends_on") or {}).items()
        if isinstance(spec, dict) and spec.get("condition") == "service_healthy"
    }
    for name in HEALTHCHECKED | waited_for:
        check = services[name].get("healthcheck") or {}
        assert check.get("test"), f"{name}: no health check"
    for name, service in _workers(services).items():
        if name in _one_shots(services):
            continue
        port = METRICS_PORTS[name]
        test = " ".join(service["healthcheck"]["test"])
        urls = re.findall(r"http://127\.0\.0\.1:(\d+)(/\w+)", test)
        assert urls, f"{name}: health check calls no loopback URL: {test}"
        ((url_port, path),) = urls
        assert int(url_port) == port, f"{name}: health check not on port {port}"
        assert path in {"/healthz", "/readyz"}, f"{name}: health check on {path}, not /healthz or /readyz"


def test_workers_probe_readiness(services: dict[str, dict[str, Any]]) -> None:
    """ingest and recall mark themselves ready (workers.runtime.run_until_stopped), refresh once something is
    live (workers.cli), the gateway has its own /readyz: compose waits for those."""
    for name in ("ingest", "recall", "refresh", "gateway"):
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"]), name


def test_workers_serve_metrics_on_every_interface(services: dict[str, dict[str, Any]]) -> None:
    """Prometheus scrapes them from its own container; the setting's default is loopback."""
    assert Settings.model_fields["metrics_host"].default == "127.0.0.1"
    for name, service in _workers(services).items():
        assert _env(service).get("MINDSTREAM_METRICS_HOST") == "0.0.0.0", name


def _minio_release(image: str) -> str:
    match = re.fullmatch(r"quay\.io/minio/minio:RELEASE\.(\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z)", image)
    assert match, f"MinIO image {image!r}: pin a RELEASE tag of quay.io/minio/minio"
    return match.group(1)


def test_minio_can_be_pulled_and_serves_woodpecker(services: dict[str, dict[str, Any]]) -> None:
    minio = services["minio"]
    assert not minio["image"].startswith("minio/"), "minio/minio is no longer on Docker Hub"
    assert _minio_release(minio["image"]) >= MINIO_MIN_RELEASE  # the tag's timestamp sorts as text
    check = minio["healthcheck"]["test"]
    assert check == ["CMD", "mc", "ready", "local"] or "/minio/health/ready" in " ".join(check), check
    env = _env(minio)
    assert env["MINIO_PROMETHEUS_AUTH_TYPE"] == "public"
    assert {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} <= set(env)
    assert not {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"} & set(env), "deprecated MinIO variables"
    milvus = _env(services["milvus"])
    assert milvus["MINIO_ACCESS_KEY_ID"] == env["MINIO_ROOT_USER"]
    assert milvus["MINIO_SECRET_ACCESS_KEY"] == env["MINIO_ROOT_PASSWORD"]


def test_minio_release_parsing() -> None:
    assert _minio_release("quay.io/minio/minio:RELEASE.2024-12-18T13-15-44Z") == MINIO_MIN_RELEASE
    assert _minio_release("quay.io/minio/minio:RELEASE.2023-03-20T20-16-18Z") < MINIO_MIN_RELEASE
    with pytest.raises(AssertionError):
        _minio_release("minio/minio:RELEASE.2025-09-06T17-38-46Z")


def test_kafka_jmx_agent(services: dict[str, dict[str, Any]]) -> None:
    """The brokers load the JMX exporter agent from the one-shot's volume, with ops/kafka/jmx-exporter.yml."""
    kafka = services["kafka"]
    opts = _env(kafka)["KAFKA_OPTS"]
    match = re.fullmatch(r"-javaagent:(/\S+\.jar)=(\d+):(/\S+)", opts)
    assert match, opts
    jar, port, config = match.group(1), int(match.group(2)), match.group(3)
    assert port == KAFKA_JMX_PORT
    mounts = dict((target, source) for source, target in _mounts(kafka))
    assert mounts[config] == "./ops/kafka/jmx-exporter.yml"
    agent = services["kafka-jmx-agent"]
    (agent_volume,) = [src for src, dst in _mounts(agent) if dst == str(Path(jar).parent)]
    assert mounts[str(Path(jar).parent)] == agent_volume
    assert kafka["depends_on"]["kafka-jmx-agent"]["condition"] == "service_completed_successfully"
    env = _env(agent)
    assert re.fullmatch(r"io\.prometheus\.jmx:jmx_prometheus_javaagent:\d+\.\d+\.\d+", env["JMX_AGENT"])
    assert re.fullmatch(r"[0-9a-f]{64}", env["JMX_AGENT_SHA256"])
    script = agent["command"][0]
    assert "sha256sum -c" in script and Path(jar).name in script
    # the broker's own tools must not load the agent (it would take the broker's port)
    assert "KAFKA_OPTS= " in " ".join(kafka["healthcheck"]["test"])


def test_depends_on(services: dict[str, dict[str, Any]]) -> None:
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        deps = service.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on should name conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert spec.get("condition") in conditions, f"{name} -> {dep}: condition"
    refresh = services["refresh"]["depends_on"]
    assert refresh["trainer"]["condition"] == "service_completed_successfully"
    assert refresh["milvus"]["condition"] == "service_healthy"


# ------------------------------------------------------------------------------ volumes


def _mounts(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            yield str(volume["source"]), str(volume["target"])
        else:
            source, target, *_ = str(volume).split(":")
            yield source, target


def test_volumes_exist(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in services.items():
        for source, _ in _mounts(service):
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {declared - used}"
    state = {
        name for name, s in _workers(services).items() if ("mindstream-state", "/var/lib/mindstream") in _mounts(s)
    }
    assert state == set(_workers(services)), "every worker shares the state volume"


def test_grafana_mounts_match_provisioning(services: dict[str, dict[str, Any]]) -> None:
    mounts = dict(_mounts(services["grafana"]))
    assert mounts["./ops/grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((ROOT / "ops/grafana/provisioning/dashboards/dashboards.yml").read_text())
    paths = {p["options"]["path"] for p in providers["providers"]}
    assert paths == {mounts["./ops/grafana/dashboards"]}
    sources = yaml.safe_load((ROOT / "ops/grafana/provisioning/datasources/prometheus.yml").read_text())
    urls = {d["url"] for d in sources["datasources"]}
    assert urls == {"http://prometheus:9090"} and "prometheus" in services


# ------------------------------------------------------------------------------ prometheus targets


def _scrape_targets(path: Path) -> dict[str, list[str]]:
    """job -> its targets: static ones, and ``name:port`` for each name a ``dns_sd_configs`` entry resolves."""
    config = yaml.safe_load(path.read_text())
    targets: dict[str, list[str]] = {}
    for job in config["scrape_configs"]:
        found = [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        for sd in job.get("dns_sd_configs", []):
            assert sd.get("type") == "A" and sd.get("port"), (job["job_name"], sd)
            found += [f"{name}:{sd['port']}" for name in sd["names"]]
        targets[job["job_name"]] = found
    return targets


def _jobs(path: Path) -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in yaml.safe_load(path.read_text())["scrape_configs"]}


def test_prometheus_mount_and_config(services: dict[str, dict[str, Any]]) -> None:
    prom = services["prometheus"]
    mounts = dict(_mounts(prom))
    assert mounts["./ops/prometheus"] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    for name in ("prometheus.yml", "prometheus.local.yml"):
        config = yaml.safe_load((PROMETHEUS_DIR / name).read_text())
        for rules in config["rule_files"]:
            assert (PROMETHEUS_DIR / rules).is_file(), f"{name}: rule file {rules} missing"


def test_metrics_ports_convention(services: dict[str, dict[str, Any]]) -> None:
    for name, port in METRICS_PORTS.items():
        assert _env(services[name])[METRICS_PORT_VARS[name]] == str(port), name


def test_compose_targets_match_services(services: dict[str, dict[str, Any]]) -> None:
    targets = _scrape_targets(PROMETHEUS_DIR / "prometheus.yml")
    assert set(targets) == {"prometheus", "kafka", *METRICS_PORTS, *INFRA_JOBS}
    jobs = _jobs(PROMETHEUS_DIR / "prometheus.yml")
    for job, port in METRICS_PORTS.items():
        # every replica: the service name resolved (type A), the worker kind's port on each address
        assert not jobs[job].get("static_configs"), f"{job}: a static target scrapes one replica only"
        assert targets[job] == [f"{job}:{port}"], job
        assert job in services, f"job {job} has no compose service"
        assert _env(services[job])[METRICS_PORT_VARS[job]] == str(port)
    for job, (service, port, path) in INFRA_JOBS.items():
        assert targets[job] == [f"{service}:{port}"], job
        assert service in services, job
        assert jobs[job].get("metrics_path", "/metrics") == path, job
    assert targets["kafka"][0] == f"kafka:{KAFKA_JMX_PORT}"
    scraped = set(targets)
    long_running = set(_workers(services)) - _one_shots(services)
    assert long_running <= scraped, f"workers without a scrape job: {long_running - scraped}"


def test_local_targets_mirror_compose() -> None:
    """`mindstream up`: the worker jobs on loopback (no Kafka exporter, Milvus is embedded, no Alertmanager)."""
    compose_targets = _scrape_targets(PROMETHEUS_DIR / "prometheus.yml")
    local_targets = _scrape_targets(PROMETHEUS_DIR / "prometheus.local.yml")
    assert set(local_targets) == {"prometheus", *METRICS_PORTS}
    assert set(local_targets) <= set(compose_targets)
    for job in METRICS_PORTS:
        assert local_targets[job] == [f"127.0.0.1:{METRICS_PORTS[job]}"], job


def test_prometheus_sends_alerts_to_alertmanager(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (manager,) = config["alerting"]["alertmanagers"]
    assert [t for sc in manager["static_configs"] for t in sc["targets"]] == ["alertmanager:9093"]
    alertmanager = services["alertmanager"]
    mounts = dict(_mounts(alertmanager))
    assert mounts["./ops/alertmanager"] == "/etc/alertmanager"
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in alertmanager["command"]
    assert (ROOT / "ops/alertmanager/alertmanager.yml").is_file()
    assert services["prometheus"]["depends_on"]["alertmanager"]["condition"] == "service_healthy"


# ------------------------------------------------------------------------------ commands, Dockerfile


def _subcommands() -> set[str]:
    parser = build_parser()
    actions = [a for a in parser._actions if a.choices and a.dest == "command"]
    assert len(actions) == 1
    return set(actions[0].choices or ())


def _worker_commands() -> list[tuple[str, list[str]]]:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    return [(name, [str(c) for c in s["command"]]) for name, s in _workers(services).items()]


@pytest.mark.parametrize(("service", "command"), _worker_commands(), ids=[n for n, _ in _worker_commands()])
def test_worker_commands_are_subcommands(service: str, command: list[str]) -> None:
    name = command[0]
    if name not in _subcommands():
        if name in PENDING_SUBCOMMANDS:
            pytest.skip(f"PENDING sub-command {name!r} (service {service}) is not in workers.cli yet")
        pytest.fail(f"{service}: {name!r} is not a mindstream sub-command ({sorted(_subcommands())})")
    build_parser().parse_args(command)  # flags too: exits (SystemExit 2) on an unknown one


def test_expected_worker_commands() -> None:
    commands = dict(_worker_commands())
    assert {k: v[0] for k, v in commands.items()} == {
        "trainer": "train",
        "ingest": "ingest",
        "refresh": "refresh",
        "recall": "recall",
        "gateway": "gateway",
    }


def test_pending_lists_are_current() -> None:
    """Fails while a PENDING entry has landed: remove it, so that its check becomes strict. (With both
    sets empty, as now, there is nothing pending and nothing to report.)"""
    landed = sorted(PENDING_SUBCOMMANDS & _subcommands())
    landed += sorted(s for s in PENDING_SECTIONS if s in Settings.model_fields)
    assert not landed, f"now real, remove from the PENDING sets: {landed}"


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", text, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base.group(1)), base
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert 'ENTRYPOINT ["mindstream"]' in text and "mindstream" in scripts
    assert re.search(r"pip install --no-deps \.", text)
    assert "pip install --require-hashes --no-deps -r requirements.lock" in text  # tests/ops/test_lock.py
    assert "pip install --no-deps recbole==1.2.1" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in {"root", "0"}
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert {".venv", ".git", ".mindstream", "tests"} <= set(ignored)
    for needed in ("pyproject.toml", "README.md", "requirements.lock", "model", "workers", "schemas"):
        assert needed not in ignored and (ROOT / needed).exists(), needed


def test_pending_section_becomes_strict_once_declared(monkeypatch: pytest.MonkeyPatch) -> None:
    """A section listed as PENDING and not in ``Settings`` is skipped; once declared, it is strict."""
    assert "future" not in Settings.model_fields
    monkeypatch.setattr(sys.modules[__name__], "PENDING_SECTIONS", {"future"})
    assert _pending("MINDSTREAM_FUTURE__PORT")  # undeclared: pending, not an error
    assert _resolve("MINDSTREAM_FUTURE__PORT") is not None

    class Future(BaseModel):
        host: str = "127.0.0.1"
        port: int = 8000

    class WithFuture(Settings):
        future: Future = Future()

    monkeypatch.setattr(sys.modules[__name__], "Settings", WithFuture)
    assert not _pending("MINDSTREAM_FUTURE__PORT")  # declared: strict, though still listed
    assert _resolve("MINDSTREAM_FUTURE__PORT") is None
    assert _resolve("MINDSTREAM_FUTURE__PROT") is not None  # a typo is caught
