"""Security properties without the embedded servers: admin token guard, secrets never shown, loopback bind;
the gateway against hostile input: no user's history without a token (every route that takes a user id),
the Host check (DNS rebinding), security headers on every response, bounded metric labels, and health
endpoints that answer while the batcher and Milvus hang.

Complements ``test_settings.py`` (SASL_SSL / SSL rendering) and ``tests/workers/gateway/test_app.py``
(401/403 against the real Milvus): here the guards are checked on fakes, so no destructive call and no
history read can slip through.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import inspect
import ipaddress
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest
from confluent_kafka import KafkaException, Producer
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, SecretStr

import workers.gateway.app as gateway
import workers.gateway.auth as gateway_auth
from tests.workers.gateway import ui_fakes as fakes
from workers import cli
from workers.gateway.admin import DropResult, InsertResult
from workers.gateway.app import create_app
from workers.gateway.middleware import CSP, request_host
from workers.infra.vector_store import SearchResult, VectorStore
from workers.recall.engine import RecallEngine
from workers.refresh.registry import ModelRegistry
from workers.settings import HttpSettings, KafkaSettings, MilvusSettings, Settings

TOKEN = "admin-Tok3n-s3cr3t"
READ_TOKEN = "read-Tok3n-s3cr3t"
BASE_URL = "http://127.0.0.1:8000"  # a Host the gateway answers (the test client's default, testserver, is not)
SASL_PASSWORD = "sasl-Pa55-s3cr3t"
MILVUS_TOKEN = "root:Milvus-s3cr3t"
KEY_PASSWORD = "key-Pa55-s3cr3t"
SECRETS = (TOKEN, READ_TOKEN, SASL_PASSWORD, MILVUS_TOKEN, KEY_PASSWORD)
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
        "MINDSTREAM_HTTP__READ_TOKEN": READ_TOKEN,
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
        http=HttpSettings(
            admin_token=SecretStr(token) if token is not None else None, read_token=SecretStr(READ_TOKEN)
        ),
    )


@contextlib.contextmanager
def _client(settings: Settings) -> Iterator[tuple[TestClient, FakeAdmin, CollectorRegistry]]:
    admin, registry, store = FakeAdmin(), CollectorRegistry(), FakeStore()
    engine = RecallEngine(FakeLive(), store)
    app = create_app(settings, store=store, engine=engine, registry=registry, admin=admin)  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False, base_url=BASE_URL) as client:
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
    original = gateway_auth.secrets.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(gateway_auth.secrets, "compare_digest", spy)
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
        texts.append(client.post("/rec/recall", json={"user_ids": [1]}, headers={"Authorization": "Bearer x"}).text)
        texts.append(client.post("/rec/recall", json={"user_ids": [1]}).text)
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
    assert shown["http"]["admin_token"] == masked and shown["http"]["read_token"] == masked
    assert shown["milvus"]["token"] == masked
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


# ---------------------------------------------------------------------------------------- the gateway, hostile input

ALIAS = "sec"
USERS = {7: [3, 9, 4, 12], 8: [5]}
HISTORY_BODIES: dict[str, dict[str, Any]] = {  # every route that takes a user id: what asks it for a history
    "/rec/recall": {"user_ids": [7], "top_k": 5},
    "/ui/api/explore": {"user_id": 7, "top_k": 5},
}
OPEN_BODIES: dict[str, dict[str, Any]] = {  # the same routes with the caller's own ids: no token needed
    "/rec/recall": {"hist_item": [[3, 9, 4]], "top_k": 5},
    "/ui/api/explore": {"items": [3, 9, 4], "top_k": 5},
}
USER_FIELDS = {"user_id", "user_ids"}


class SpyHistories(fakes.Histories):
    """The state store's histories, recording every user whose history was read."""

    def __init__(self) -> None:
        super().__init__(USERS)
        self.read: list[int] = []

    def history(self, user_id: int, maxlen: int) -> list[int]:
        self.read.append(user_id)
        return super().history(user_id, maxlen)


class HangingStore(fakes.Store):
    """The in-memory store; once ``hang`` is set, Milvus calls block until ``released``."""

    def __init__(self) -> None:
        super().__init__(ALIAS, {f"{ALIAS}_v1": fakes.table(1)}, target=f"{ALIAS}_v1")
        self.hang = False
        self.released = threading.Event()
        self.searching = threading.Event()

    def resolve_alias(self, alias: str) -> str | None:
        if self.hang:
            self.released.wait(30)
        return super().resolve_alias(alias)

    def search(
        self,
        name: str,
        queries: np.ndarray,
        top_k: int,
        *,
        with_versions: bool = True,
        max_generation: int | None = None,
    ) -> SearchResult:
        self.searching.set()
        if self.hang:
            self.released.wait(30)
        return super().search(name, queries, top_k, with_versions=with_versions, max_generation=max_generation)


@contextlib.contextmanager
def _gateway(
    http: HttpSettings, store: HangingStore | None = None
) -> Iterator[tuple[TestClient, HangingStore, SpyHistories, CollectorRegistry]]:
    """The real app on an in-memory store with a live model and a spy on the users' histories."""
    from workers.gateway.catalogue import Catalogue

    store = store or HangingStore()
    histories, registry = SpyHistories(), CollectorRegistry()
    settings = Settings(milvus=MilvusSettings(uri="http://127.0.0.1:1", alias=ALIAS), http=http)
    engine = RecallEngine(fakes.Live(store), store, histories)
    app = create_app(
        settings,
        store=cast(VectorStore, store),
        engine=engine,
        registry=registry,
        admin=FakeAdmin(),  # type: ignore[arg-type]
        catalogue=Catalogue(name="none"),
    )
    try:
        with TestClient(app, raise_server_exceptions=False, base_url=BASE_URL) as client:
            yield client, store, histories, registry
    finally:
        store.released.set()


def _user_routes(app: FastAPI) -> set[str]:
    """Paths of the routes whose parameters (or body model's fields) name a user id."""
    found = set()
    for route in app.routes:
        if not isinstance(route, APIRoute):
            continue
        dependant = route.dependant
        names: set[str] = set()
        for param in (*dependant.path_params, *dependant.query_params, *dependant.body_params):
            names.add(param.name)
            annotation = param.field_info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                names |= set(annotation.model_fields)
        if names & USER_FIELDS:
            found.add(route.path)
    return found


def test_the_routes_that_take_a_user_id_are_the_guarded_ones() -> None:
    with _gateway(HttpSettings(read_token=SecretStr(READ_TOKEN))) as (client, _, _, _):
        assert _user_routes(cast(FastAPI, client.app)) == set(HISTORY_BODIES)  # a new one must be guarded here too
        spec = client.get("/openapi.json").json()
    recall = spec["paths"]["/rec/recall"]["post"]
    assert recall["security"] == [{"HTTPBearer": []}]  # /docs' "Authorize" sends the token with user_ids
    assert {"401", "403", "503"} <= set(recall["responses"])


@pytest.mark.parametrize("path", list(HISTORY_BODIES))
def test_no_users_history_without_a_token(path: str) -> None:
    http = HttpSettings(read_token=SecretStr(READ_TOKEN), admin_token=SecretStr(TOKEN))
    with _gateway(http) as (client, store, histories, _):
        body = HISTORY_BODIES[path]
        r = client.post(path, json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        assert r.json()["code"] == "bad_request" and "read token" in r.json()["message"]
        for header in ("Bearer", "Bearer ", f"Basic {READ_TOKEN}", f"Token {READ_TOKEN}", READ_TOKEN):
            assert client.post(path, json=body, headers={"Authorization": header}).status_code == 401, header
        for wrong in ("wrong", READ_TOKEN[:-1], READ_TOKEN + "x", READ_TOKEN.upper(), f"{READ_TOKEN} {TOKEN}"):
            r = client.post(path, json=body, headers={"Authorization": f"Bearer {wrong}"})
            assert r.status_code == 403 and r.json()["message"] == "invalid token for a user's history", wrong
            assert READ_TOKEN not in r.text
        assert histories.read == [] and store.searches == 0  # no history was read, nothing was searched
        for token in (READ_TOKEN, TOKEN):  # the read token, or the admin token
            r = client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
        assert histories.read == [7, 7]
        assert client.post(path, json=OPEN_BODIES[path]).status_code == 200  # the caller's own ids stay open
        assert histories.read == [7, 7]


@pytest.mark.parametrize("path", list(HISTORY_BODIES))
def test_without_a_read_token_only_the_admin_token_opens_a_history(path: str) -> None:
    with _gateway(HttpSettings(admin_token=SecretStr(TOKEN))) as (client, _, histories, _):
        body = HISTORY_BODIES[path]
        assert client.post(path, json=body).status_code == 401
        assert client.post(path, json=body, headers={"Authorization": f"Bearer {READ_TOKEN}"}).status_code == 403
        assert histories.read == []
        assert client.post(path, json=body, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    with _gateway(HttpSettings(read_token=SecretStr(""))) as (client, _, histories, _):  # nothing configured
        for auth in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer x"}):
            r = client.post(path, json=body, headers=auth)
            assert r.status_code == 403 and "no read token is configured" in r.json()["message"]
        assert histories.read == []
        assert client.post(path, json=OPEN_BODIES[path]).status_code == 200


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1:8000", "127.0.0.1"),
        ("LocalHost.:8000", "localhost"),
        ("[::1]:8000", "[::1]"),
        ("[::1]", "[::1]"),
        ("evil.example:8000", "evil.example"),
        ("localhost:http", None),
        ("localhost:80:80", None),
        ("[::1]x", None),
        ("[::1", None),
        ("localhost:\uff18\uff10", None),  # fullwidth digits: not a port
        ("", None),
        (":8000", None),
    ],
)
def test_host_header_parsing(header: str, host: str | None) -> None:
    assert request_host([(b"host", header.encode())]) == host
    assert request_host([]) is None
    assert request_host([(b"host", b"localhost"), (b"host", b"evil.example")]) is None  # ambiguous: refused


HOSTILE_HOSTS = [  # names a DNS-rebinding page would send (its own), and malformed Hosts
    "evil.example",
    "evil.example:8000",
    "127.0.0.1.evil.example",
    "localhost.evil.example",
    "2130706433",  # not an address as a browser writes one
    "localhost:http",
]


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_a_hostile_host_is_refused_before_anything_runs(host: str) -> None:
    http = HttpSettings(read_token=SecretStr(READ_TOKEN))
    with _gateway(http) as (client, store, histories, registry):
        auth = {"Authorization": f"Bearer {READ_TOKEN}", "Host": host}
        for method, path, body in [
            ("POST", "/rec/recall", OPEN_BODIES["/rec/recall"]),
            ("POST", "/rec/recall", HISTORY_BODIES["/rec/recall"]),
            ("POST", "/ui/api/explore", HISTORY_BODIES["/ui/api/explore"]),
            ("GET", "/ui", None),
            ("GET", "/ui/api/status", None),
            ("GET", "/metrics", None),
        ]:
            r = client.request(method, path, json=body, headers=auth)
            assert r.status_code == 400, (path, r.text)
            assert r.json()["code"] == "bad_request" and "allowed_hosts" in r.json()["message"]
            assert r.headers["x-content-type-options"] == "nosniff"
        assert histories.read == [] and store.searches == 0
        for good in ("127.0.0.1:8000", "localhost", "[::1]:8000", "LOCALHOST.", "10.1.2.3:8000", "[fe80::1]"):
            assert client.get("/healthz", headers={"Host": good}).status_code == 200, good  # listed, or an address
        refused = registry.get_sample_value(
            "mindstream_http_requests_total", {"endpoint": "unmatched", "method": "POST", "status": "400"}
        )
        assert refused == 3


def test_allowed_hosts_follow_the_settings() -> None:
    cases: list[tuple[HttpSettings, list[str], list[str]]] = [
        (HttpSettings(host="gw.internal"), ["gw.internal:8000", "localhost"], ["other.internal", "evil.example"]),
        (HttpSettings(host="0.0.0.0"), ["127.0.0.1", "10.0.0.5:8000"], ["gw.internal", "evil.example"]),
        (HttpSettings(allowed_hosts=["*.example.com"]), ["gw.example.com:443"], ["example.com", "gw.example.com.evil"]),
        (HttpSettings(allowed_hosts=["gateway"]), ["gateway:8000", "172.18.0.7:8000"], ["localhost", "gateway.evil"]),
        (HttpSettings(allowed_hosts=["*"]), ["evil.example", "anything:1"], []),
    ]
    for http, allowed, refused in cases:
        with _gateway(http) as (client, _, _, _):
            for host in allowed:
                assert client.get("/healthz", headers={"Host": host}).status_code == 200, (http.allowed_hosts, host)
            for host in refused:
                assert client.get("/healthz", headers={"Host": host}).status_code == 400, (http.allowed_hosts, host)


def test_security_headers_on_every_response() -> None:
    with _gateway(HttpSettings(admin_token=SecretStr(TOKEN))) as (client, _, _, _):
        answers = {
            "page": client.get("/ui"),
            "page file": client.get("/ui/static/ui.js"),
            "root": client.get("/"),
            "status": client.get("/ui/api/status"),
            "health": client.get("/healthz"),
            "ready": client.get("/readyz"),
            "metrics": client.get("/metrics"),
            "openapi": client.get("/openapi.json"),
            "recall (fast path)": client.post("/rec/recall", json=OPEN_BODIES["/rec/recall"]),
            "recall 422": client.post("/rec/recall", json={"top_k": 0}),
            "recall 401": client.post("/rec/recall", json=HISTORY_BODIES["/rec/recall"]),
            "413": client.post("/rec/recall", content=b"[" * 2_000_000, headers={"content-type": "application/json"}),
            "admin 401": client.post("/rec/drop"),
            "404": client.get("/no/such/page"),
            "bad host": client.get("/ui", headers={"Host": "evil.example"}),
            "500": client.post("/rec/count"),  # the fake admin cannot count: an unhandled error
        }
        assert answers["500"].status_code == 500 and answers["500"].json()["code"] == "internal"
        docs = client.get("/docs")
    for what, r in answers.items():
        assert r.headers.get("content-security-policy") == CSP, what
        assert r.headers.get("x-content-type-options") == "nosniff", what
        assert r.headers.get("referrer-policy") == "no-referrer", what
    assert "script-src 'self';" in CSP and "'unsafe-inline'" not in CSP and "frame-ancestors 'none'" in CSP
    page = answers["page"].text  # the page needs nothing inline: no <script> body, no <style>, no style=
    assert not re.search(r"<script>|<style|\sstyle=|\son[a-z]+=", page + answers["root"].text, re.I)
    # /docs: Swagger UI's one inline script, allowed by its hash and nothing else
    policy = docs.headers["content-security-policy"]
    scripts = re.findall(r"<script>(.*?)</script>", docs.text, re.S)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}';" in policy and "'unsafe-inline'" not in policy
    assert docs.headers["x-content-type-options"] == "nosniff"


def test_metric_labels_stay_bounded_whatever_the_method_and_path() -> None:
    with _gateway(HttpSettings()) as (client, _, _, registry):
        for n in range(5):
            client.request(f"FOOBAR{n}", "/rec/recall")
            client.request(f"FOOBAR{n}", f"/no/such/path/{n}")
        client.get(f"/no/such/path/{'x' * 200}?token=s3cr3t")
        client.request("PURGE", "/healthz")
        text = client.get("/metrics").text
    assert "FOOBAR" not in text and "/no/such" not in text and "PURGE" not in text and "s3cr3t" not in text
    labels = set(re.findall(r'method="([^"]*)"', text))
    assert labels <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"} and "other" in labels
    endpoints = set(re.findall(r'endpoint="([^"]*)"', text))
    assert "unmatched" in endpoints and all(e == "unmatched" or (e.startswith("/") and len(e) < 40) for e in endpoints)
    other = registry.get_sample_value(
        "mindstream_http_requests_total", {"endpoint": "/rec/recall", "method": "other", "status": "405"}
    )
    assert other == 5


def test_health_answers_while_the_batcher_and_milvus_hang() -> None:
    """A search stuck in Milvus holds the batcher; the alias check hangs too: /healthz and /readyz answer at once
    from the event loop and the cached alias state."""
    with _gateway(HttpSettings()) as (client, store, _, _), ThreadPoolExecutor(max_workers=4) as pool:
        store.hang = True
        stuck = pool.submit(client.post, "/rec/recall", json=OPEN_BODIES["/rec/recall"])
        assert store.searching.wait(10), "the recall never reached the store"
        queued = pool.submit(client.post, "/rec/recall", json=OPEN_BODIES["/rec/recall"])  # behind the stuck one
        began = time.monotonic()
        health = pool.submit(client.get, "/healthz").result(timeout=10)
        ready = pool.submit(client.get, "/readyz").result(timeout=10)
        took = time.monotonic() - began
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert ready.status_code == 200 and ready.json()["collection"] == f"{ALIAS}_v1"
        assert took < 5, f"health endpoints took {took:.1f} s behind the batcher"
        assert not stuck.done() and not queued.done()  # they were really still waiting
        store.released.set()
        assert stuck.result(timeout=30).status_code == 200 and queued.result(timeout=30).status_code == 200


def test_readyz_says_not_ready_when_the_alias_checks_stop_answering(monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.gateway.recall as gateway_recall

    monkeypatch.setattr(gateway_recall, "STALE_MIN_S", 0.0)  # stale after 10 missed checks of 0.5 s
    with _gateway(HttpSettings()) as (client, store, _, _):
        assert client.get("/readyz").status_code == 200
        store.hang = True  # the next alias check hangs: the last answer grows old
        deadline = time.monotonic() + 30
        ready = client.get("/readyz")
        while ready.status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["reason"] == "Milvus not answering"
        assert client.get("/healthz").status_code == 200  # alive, just not ready


def test_a_client_that_sends_no_host_is_refused() -> None:
    """HTTP/1.0 without Host: not a browser, but not a name the gateway was told to answer either."""

    async def call() -> int:
        with _gateway(HttpSettings()) as (client, _, _, _):
            transport = httpx.ASGITransport(app=client.app)
            async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as raw:
                request = raw.build_request("GET", "/healthz")
                del request.headers["host"]
                return (await raw.send(request)).status_code

    import asyncio

    assert asyncio.run(call()) == 400
