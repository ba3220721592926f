"""Security properties without the embedded servers: admin token guard, secrets never shown, loopback bind.

Complements ``test_settings.py`` (SASL_SSL / SSL rendering) and ``test_gateway.py`` (401/403 against
the real Milvus): here the guard is checked on a fake admin, so no destructive call can slip through.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import ipaddress
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import KafkaException, Producer
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

import workers.gateway.app as gateway
import workers.gateway.auth as gateway_auth
from workers import cli
from workers.gateway.admin import DropResult, InsertResult
from workers.gateway.app import create_app
from workers.recall.engine import RecallEngine
from workers.refresh.registry import ModelRegistry
from workers.settings import HttpSettings, KafkaSettings, MilvusSettings, Settings

TOKEN = "admin-Tok3n-s3cr3t"
SASL_PASSWORD = "sasl-Pa55-s3cr3t"
MILVUS_TOKEN = "root:Milvus-s3cr3t"
KEY_PASSWORD = "key-Pa55-s3cr3t"
SECRETS = (TOKEN, SASL_PASSWORD, MILVUS_TOKEN, KEY_PASSWORD)
ADMIN_PATHS = ("/rec/insert_data", "/rec/drop")


class FakeStore:
    def resolve_alias(self, alias: str) -> str | None:
        return None

    def search(
        self,
        name: str,
        queries: np.ndarray,
        top_k: int,
        *,
        with_versions: bool = True,
        max_generation: int | None = None,
    ) -> Any:
        raise AssertionError("no search expected")


class FakeLive:
    def current(self, *, force: bool = False) -> None:
        return None


class FakeAdmin:
    """Records destructive calls: none may happen without the right token."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.registry = ModelRegistry(Path("no-models"), "c")  # the /ui sampler names versions by it

    def insert_data(self) -> InsertResult:
        self.calls.append("insert_data")
        return InsertResult(model_version="v1", collection="c_v1", rows=1, previous=None, swapped=True)

    def drop(self) -> DropResult:
        self.calls.append("drop")
        return DropResult(alias_dropped=True, dropped=["c_v1"], kept=[])

    def live(self) -> str | None:
        return None


def _secret_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in {
        "MINDSTREAM_STATE_DIR": str(tmp_path),
        "MINDSTREAM_HTTP__ADMIN_TOKEN": TOKEN,
        "MINDSTREAM_MILVUS__TOKEN": MILVUS_TOKEN,
        "MINDSTREAM_KAFKA__BOOTSTRAP_SERVERS": "k1:9093",
        "MINDSTREAM_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "MINDSTREAM_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
        "MINDSTREAM_KAFKA__SASL_USERNAME": "svc",
        "MINDSTREAM_KAFKA__SASL_PASSWORD": SASL_PASSWORD,
        "MINDSTREAM_KAFKA__SSL_KEY_PASSWORD": KEY_PASSWORD,
    }.items():
        monkeypatch.setenv(name, value)


def _settings(token: str | None = TOKEN) -> Settings:
    return Settings(
        milvus=MilvusSettings(uri="http://milvus.invalid:19530", token=SecretStr(MILVUS_TOKEN)),
        kafka=KafkaSettings(
            bootstrap_servers="k1:9093",
            security_protocol="SASL_SSL",
            sasl_mechanism="PLAIN",
            sasl_username="svc",
            sasl_password=SecretStr(SASL_PASSWORD),
            ssl_key_password=SecretStr(KEY_PASSWORD),
        ),
        http=HttpSettings(admin_token=SecretStr(token) if token is not None else None),
    )


@contextlib.contextmanager
def _client(settings: Settings) -> Iterator[tuple[TestClient, FakeAdmin, CollectorRegistry]]:
    admin, registry, store = FakeAdmin(), CollectorRegistry(), FakeStore()
    engine = RecallEngine(FakeLive(), store)
    app = create_app(settings, store=store, engine=engine, registry=registry, admin=admin)  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, admin, registry


def _assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} shows a secret"


# ---------------------------------------------------------------------------------------- admin token


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_destructive_endpoints_need_the_token(path: str) -> None:
    with _client(_settings()) as (client, admin, _):
        assert client.post(path).status_code == 401
        assert client.post(path, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        assert client.post(path, headers={"Authorization": "Bearer"}).status_code == 401
        for wrong in ("wrong", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), f"{TOKEN} {TOKEN}", "ü" * 8):
            r = client.post(path, headers={"Authorization": f"Bearer {wrong}".encode()})
            assert r.status_code == 403, (wrong, r.status_code)
            assert TOKEN not in r.text and r.json()["detail"] == "invalid admin token"
        assert admin.calls == []  # nothing destructive happened
        r = client.post(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and admin.calls == [path.rsplit("/", 1)[1]]


@pytest.mark.parametrize("token", [None, ""])
def test_no_configured_token_refuses_everyone(token: str | None) -> None:
    with _client(_settings(token)) as (client, admin, _):
        for path in ADMIN_PATHS:
            assert client.post(path, headers={"Authorization": f"Bearer {token or ''}x"}).status_code == 403
            assert client.post(path, headers={"Authorization": "Bearer "}).status_code in (401, 403)
        assert admin.calls == []


def test_token_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(gateway_auth.hmac, "compare_digest", spy)
    with _client(_settings()) as (client, admin, _):
        for presented in ("short", TOKEN + "-much-longer-than-the-real-one", TOKEN):
            client.post("/rec/drop", headers={"Authorization": f"Bearer {presented}"})
    assert calls == [(p.encode(), TOKEN.encode()) for p in ("short", TOKEN + "-much-longer-than-the-real-one", TOKEN)]
    assert admin.calls == ["drop"]
    source = inspect.getsource(gateway_auth)
    assert "credentials.credentials ==" not in source and "== expected" not in source


# ---------------------------------------------------------------------------------------- secrets never shown


def test_no_secret_in_logs_metrics_or_responses(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = _settings()
    conf = settings.kafka.client_config()
    assert conf["sasl.password"] == SASL_PASSWORD  # librdkafka needs it in clear, and only there
    logging.getLogger("test").debug("settings: %s / %r / %s", settings, settings, settings.model_dump_json())
    with _client(settings) as (client, _, _):
        texts = [client.post(p, headers={"Authorization": f"Bearer {TOKEN}-wrong"}).text for p in ADMIN_PATHS]
        texts += [client.post(p).text for p in ADMIN_PATHS]
        texts.append(client.post("/rec/drop", headers={"Authorization": f"Bearer {TOKEN}"}).text)
        texts.append(client.post("/rec/recall", json={"hist_item": [[1]]}).text)
        texts.append(client.get("/openapi.json").text)
        metrics = client.get("/metrics").text
    assert 'endpoint="/rec/drop"' in metrics
    _assert_no_secret(metrics, "/metrics")
    _assert_no_secret("\n".join(texts), "a response")
    logged = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    assert "admin call refused" in logged  # the wrong token was logged about, not logged
    _assert_no_secret(logged, "the log")


def test_settings_repr_dump_and_cli_mask_secrets(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    _secret_env(monkeypatch, tmp_path)
    settings = Settings()
    assert settings.http.admin_token is not None and settings.http.admin_token.get_secret_value() == TOKEN
    for text, where in ((repr(settings), "repr"), (str(settings), "str"), (settings.model_dump_json(), "dump")):
        _assert_no_secret(text, where)
    assert cli.main(["--log-level", "DEBUG", "settings"]) == 0
    out = capsys.readouterr()
    _assert_no_secret(out.out + out.err, "mindstream settings")
    shown = json.loads(out.out)
    masked = "**********"
    assert shown["http"]["admin_token"] == masked and shown["milvus"]["token"] == masked
    assert shown["kafka"]["sasl_password"] == masked and shown["kafka"]["ssl_key_password"] == masked
    assert shown["kafka"]["sasl_username"] == "svc"  # not a secret: shown
    _assert_no_secret("\n".join(r.getMessage() for r in caplog.records), "the log")


# ---------------------------------------------------------------------------------------- librdkafka config


def test_sasl_plaintext_renders_no_tls_keys() -> None:
    conf = KafkaSettings(
        bootstrap_servers="k:9092",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password=SecretStr(SASL_PASSWORD),
    ).client_config()
    assert conf == {
        "bootstrap.servers": "k:9092",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "svc",
        "sasl.password": SASL_PASSWORD,
    }


def test_plaintext_ignores_sasl_credentials() -> None:
    conf = KafkaSettings(
        bootstrap_servers="k:9092", sasl_mechanism="PLAIN", sasl_username="svc", sasl_password=SecretStr("pw")
    ).client_config()
    assert conf == {"bootstrap.servers": "k:9092", "security.protocol": "PLAINTEXT"}


def test_sasl_ssl_with_mutual_tls_renders_every_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _secret_env(monkeypatch, tmp_path)
    monkeypatch.setenv("MINDSTREAM_KAFKA__SSL_CA_LOCATION", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("MINDSTREAM_KAFKA__SSL_CERTIFICATE_LOCATION", str(tmp_path / "client.pem"))
    monkeypatch.setenv("MINDSTREAM_KAFKA__SSL_KEY_LOCATION", str(tmp_path / "client.key"))
    assert Settings().kafka.client_config() == {
        "bootstrap.servers": "k1:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "svc",
        "sasl.password": SASL_PASSWORD,
        "ssl.ca.location": str(tmp_path / "ca.pem"),
        "ssl.certificate.location": str(tmp_path / "client.pem"),
        "ssl.key.location": str(tmp_path / "client.key"),
        "ssl.key.password": KEY_PASSWORD,
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"},
        {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"},
        {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256"},
        {"security_protocol": "SSL"},
    ],
    ids=["sasl-ssl-plain", "sasl-ssl-scram512", "sasl-plaintext-scram256", "ssl"],
)
def test_librdkafka_accepts_the_rendered_config(fields: dict[str, str]) -> None:
    """Every rendered key and value is one librdkafka knows (a typo would raise here); no broker needed."""
    credentials = {"sasl_username": "u", "sasl_password": "p"} if "sasl_mechanism" in fields else {}
    conf = KafkaSettings.model_validate({"bootstrap_servers": "127.0.0.1:1", **fields, **credentials}).client_config()
    quiet = {"log_level": 0, "socket.connection.setup.timeout.ms": 1000}
    Producer({**conf, **quiet})  # the check: librdkafka validates every key and value here, or raises
    key = next(k for k in conf if k.startswith(("sasl.", "ssl.", "security.")))
    with pytest.raises(KafkaException):  # the control: the same config with one key misspelt is refused
        Producer({**{k: v for k, v in conf.items() if k != key}, key + "x": conf[key], **quiet})


# ---------------------------------------------------------------------------------------- bind address


def test_default_bind_hosts_are_loopback() -> None:
    settings = Settings()
    for host in (settings.http.host, settings.milvus.embedded_host, settings.kafka.embedded_host):
        assert ipaddress.ip_address(host).is_loopback, host
    assert gateway._parser().parse_args([]).host is None  # None = settings.http.host
    assert gateway._parser().parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    ("argv", "env_host", "expected"),
    [([], None, "127.0.0.1"), (["--host", "::1", "--port", "8123"], None, "::1"), ([], "10.0.0.5", "10.0.0.5")],
)
def test_gateway_main_binds_where_told_and_loopback_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str], env_host: str | None, expected: str
) -> None:
    import uvicorn

    import workers.infra.milvus_server as milvus_server
    import workers.ingest.state_reader as state_reader
    import workers.recall.live_model as live_model

    monkeypatch.setenv("MINDSTREAM_STATE_DIR", str(tmp_path))
    if env_host:
        monkeypatch.setenv("MINDSTREAM_HTTP__HOST", env_host)
    bound: dict[str, Any] = {}

    @contextlib.contextmanager
    def fake_milvus(*_: object) -> Iterator[str]:
        yield "http://127.0.0.1:1"

    class Fake(contextlib.AbstractContextManager["Fake"]):
        def __init__(self, *_: object, **__: object) -> None:
            pass

        def __exit__(self, *_: object) -> None:
            return None

        def resolve_alias(self, alias: str) -> None:
            return None

        def current(self, *, force: bool = False) -> None:
            return None

    def fake_config(app: object, *, host: str, port: int, **_: object) -> dict[str, Any]:
        bound.update(host=host, port=port)
        return bound

    class FakeServer:
        def __init__(self, config: object) -> None:
            pass

        def run(self) -> None:
            raise _Stop

    monkeypatch.setattr(milvus_server, "open_milvus", fake_milvus)
    monkeypatch.setattr(gateway, "VectorStore", Fake)
    monkeypatch.setattr(state_reader, "StateReader", Fake)
    monkeypatch.setattr(live_model, "LiveModel", Fake)
    monkeypatch.setattr(uvicorn, "Config", fake_config)
    monkeypatch.setattr(uvicorn, "Server", FakeServer)
    with pytest.raises(_Stop):
        gateway.main(argv)
    assert bound["host"] == expected
    assert bound["port"] == (8123 if "--port" in argv else HttpSettings().port)
