"""The model registry over a shared store: the writer's versions reach a reader on another root (S3 via moto)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from model.checkpoint import Checkpoint, Manifest
from tests.fixtures_s3 import moto_s3
from workers.infra.model_store import RemoteModelStore
from workers.refresh.registry import ModelRegistry
from workers.settings import Settings

BUCKET = "registry"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3(BUCKET) as endpoint:
        yield endpoint


def _settings(state_dir: Path, endpoint: str) -> Settings:
    return Settings.model_validate(
        {
            "state_dir": state_dir,
            "models": {
                "store_url": f"s3://{BUCKET}/models",
                "endpoint_url": endpoint,
                "access_key": "test",
                "secret_key": "test",
                "cache_versions": 1,
            },
        }
    )


def _save(root: Path, version: str) -> Checkpoint:
    path = root / version
    path.mkdir(parents=True)
    manifest = Manifest(version, None, 1, 0.0, 5, "fp", {}, {}, {})
    (path / "manifest.json").write_text(manifest.to_json())
    (path / "net.pdparams").write_bytes(b"weights-" + version.encode())
    return Checkpoint(path, manifest)


def test_reader_on_another_root_loads_what_the_writer_published(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    writer = ModelRegistry.from_settings(_settings(tmp_path / "refresh", s3_endpoint))
    reader = ModelRegistry.from_settings(_settings(tmp_path / "recall", s3_endpoint))
    assert isinstance(reader.store, RemoteModelStore)
    for version in ("v1", "v2"):
        writer.publish(_save(writer.root, version))
    assert reader.versions() == ["v1", "v2"]
    ckpt = reader.checkpoint("v1")
    assert ckpt.path == tmp_path / "recall" / "model-cache" / "v1"
    assert ckpt.manifest.version == "v1" and ckpt.manifest.item_count == 5
    assert (ckpt.path / "net.pdparams").read_bytes() == b"weights-v1"
    latest = reader.latest()
    assert latest is not None and latest.manifest.version == "v2"
    assert not (tmp_path / "recall" / "models").exists()  # nothing read from a models directory
    writer.forget(["v1"])
    assert reader.versions() == ["v2"]
    with pytest.raises(FileNotFoundError):
        reader.checkpoint("v1")  # evicted from the one-version cache, deleted from the store


def test_local_default_keeps_one_directory(tmp_path: Path) -> None:
    registry = ModelRegistry.from_settings(Settings(state_dir=tmp_path))
    assert registry.store is None and registry.root == tmp_path / "models"
    saved = _save(registry.root, "v1")
    registry.publish(saved)
    assert registry.versions() == ["v1"]
    assert registry.checkpoint("v1").path == saved.path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
