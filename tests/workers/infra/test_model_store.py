"""The model store contract, against the local directory and a real S3-compatible server (moto)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_s3 import moto_s3
from workers.infra.model_store import LocalModelStore, ModelStore, RemoteModelStore, model_store
from workers.settings import Settings

s3fs = pytest.importorskip("s3fs")

BUCKET = "models"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3(BUCKET) as endpoint:
        yield endpoint


def _s3fs(endpoint: str) -> Any:
    return s3fs.S3FileSystem(
        key="test",
        secret="test",
        client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"},
        skip_instance_cache=True,
    )


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ModelStore:
    if request.param == "local":
        return LocalModelStore(tmp_path / "models")
    endpoint = request.getfixturevalue("s3_endpoint")
    return RemoteModelStore(_s3fs(endpoint), f"{BUCKET}/{tmp_path.name}", tmp_path / "cache", cache_versions=2)


def _checkpoint(root: Path, version: str) -> Path:
    path = root / "src" / version
    (path / "sub").mkdir(parents=True)
    (path / "net.pdparams").write_bytes(version.encode() * 1000)
    (path / "sub" / "items.npz").write_bytes(b"items-" + version.encode())
    (path / "manifest.json").write_text(f'{{"version": "{version}"}}')
    return path


def test_put_list_fetch_delete(store: ModelStore, tmp_path: Path) -> None:
    assert store.versions() == []
    for version in ("v1", "v2", "v10"):
        store.publish(_checkpoint(tmp_path, version), version)
    assert store.versions() == ["v1", "v2", "v10"]
    with pytest.raises(FileExistsError):  # a writer that lost its count never overwrites a version
        store.publish(_checkpoint(tmp_path / "again", "v2"), "v2")
    fetched = store.fetch("v2")
    assert (fetched / "net.pdparams").read_bytes() == b"v2" * 1000
    assert (fetched / "sub" / "items.npz").read_bytes() == b"items-v2"
    assert (fetched / "manifest.json").read_text() == '{"version": "v2"}'
    store.delete("v1")
    assert store.versions() == ["v2", "v10"]
    with pytest.raises(FileNotFoundError):
        store.fetch("v1")


def test_half_written_version_is_never_seen(store: ModelStore, tmp_path: Path) -> None:
    store.publish(_checkpoint(tmp_path, "v1"), "v1")
    broken = _checkpoint(tmp_path, "v2")
    (broken / "zz_unreadable").symlink_to(tmp_path / "missing")  # uploaded last: fails mid-version
    with pytest.raises(OSError):
        store.publish(broken, "v2")
    assert store.versions() == ["v1"]
    with pytest.raises(FileNotFoundError):
        store.fetch("v2")
    (broken / "zz_unreadable").unlink()
    store.publish(broken, "v2")
    assert store.versions() == ["v1", "v2"]
    assert (store.fetch("v2") / "net.pdparams").read_bytes() == b"v2" * 1000


def test_local_publish_in_place_copies_nothing(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    saved = _checkpoint(tmp_path, "v1").rename(root / "v1")
    store = LocalModelStore(root)
    store.publish(saved, "v1")
    assert store.fetch("v1") == saved
    assert sorted(p.name for p in root.iterdir()) == ["v1"]


def test_remote_cache_keeps_newest(s3_endpoint: str, tmp_path: Path) -> None:
    fs = _s3fs(s3_endpoint)
    writer = RemoteModelStore(fs, f"{BUCKET}/cache-test", tmp_path / "writer-cache", cache_versions=2)
    reader = RemoteModelStore(fs, f"{BUCKET}/cache-test", tmp_path / "reader-cache", cache_versions=2)
    for version in ("v1", "v2", "v3"):
        writer.publish(_checkpoint(tmp_path, version), version)
    for version in ("v1", "v2", "v3"):
        assert reader.fetch(version).parent == tmp_path / "reader-cache"
    assert reader.cached_versions() == ["v2", "v3"]
    # a version deleted from the store stays readable from a cache that still holds it
    writer.delete("v3")
    assert (reader.fetch("v3") / "manifest.json").read_text() == '{"version": "v3"}'
    assert writer.versions() == ["v1", "v2"]
    assert not list((tmp_path / "reader-cache").glob(".*"))


def test_settings_choose_the_store(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    local = model_store(Settings(state_dir=tmp_path))
    assert isinstance(local, LocalModelStore) and local.root == tmp_path / "models"
    settings = Settings.model_validate(
        {
            "state_dir": tmp_path,
            "models": {
                "store_url": f"s3://{BUCKET}/from-settings",
                "endpoint_url": s3_endpoint,
                "access_key": "test",
                "secret_key": "test",
            },
        }
    )
    remote = model_store(settings)
    assert isinstance(remote, RemoteModelStore)
    remote.publish(_checkpoint(tmp_path, "v1"), "v1")
    assert remote.versions() == ["v1"]
    assert remote.fetch("v1") == tmp_path / "model-cache" / "v1"
