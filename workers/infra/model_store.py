"""One storage interface for model versions: the refresh worker publishes, readers fetch.

* :class:`LocalModelStore` is today's layout (``<models_dir>/v<N>/...``, see :mod:`model.checkpoint`):
  publishing a version saved in place copies nothing, fetching returns the directory itself.
* :class:`RemoteModelStore` keeps versions in any fsspec file system (``s3://bucket/prefix`` in
  production: the MinIO Milvus already needs). A version's files are uploaded first and its
  ``_COMPLETE`` marker last; listing and fetching see only marked versions, so a reader never sees a
  half-written version. Deleting removes the marker first. Readers fetch a version into a local cache
  directory (per process or host), renamed into place whole, keeping the newest ``cache_versions``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Protocol

import fsspec

from model.checkpoint import list_versions, version_number
from workers.settings import Settings

COMPLETE_MARKER = "_COMPLETE"


class ModelStore(Protocol):
    def publish(self, local_dir: Path, version: str) -> None:
        """Make the finished checkpoint directory ``local_dir`` visible to readers as ``version``;
        FileExistsError if the store holds ``version`` already (a version never changes)."""
        ...

    def versions(self) -> list[str]:
        """Complete versions, oldest first."""
        ...

    def fetch(self, version: str) -> Path:
        """A local directory holding ``version``; FileNotFoundError if the store has no complete one."""
        ...

    def delete(self, version: str) -> None: ...


def _files(local_dir: Path) -> list[Path]:
    return sorted(p for p in local_dir.rglob("*") if not p.is_dir())


class LocalModelStore:
    """Versions as directories ``<root>/v<N>`` (renamed into place whole)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def publish(self, local_dir: Path, version: str) -> None:
        target = self.root / version
        if local_dir.resolve() == target.resolve():
            return
        if target.exists():
            raise FileExistsError(f"model version {version} already under {self.root} (versions never change)")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{version}.{uuid.uuid4().hex}.tmp"
        try:
            shutil.copytree(local_dir, tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def versions(self) -> list[str]:
        return list_versions(self.root)

    def fetch(self, version: str) -> Path:
        path = self.root / version
        if not path.is_dir():
            raise FileNotFoundError(f"no model version {version} under {self.root}")
        return path

    def delete(self, version: str) -> None:
        path = self.root / version
        if not path.is_dir():
            return
        doomed = self.root / f".{version}.deleting"
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


class RemoteModelStore:
    """Versions under ``<url>/v<N>/`` in an fsspec file system, each complete once its marker exists."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, cache_dir: Path, cache_versions: int = 3) -> None:
        if cache_versions < 1:
            raise ValueError("cache at least one version")
        self.fs = fs
        self.root = root.rstrip("/")
        self.cache_dir = cache_dir
        self.cache_versions = cache_versions

    def _key(self, version: str, name: str = "") -> str:
        version_number(version)  # rejects anything that is not v<N>
        return f"{self.root}/{version}/{name}" if name else f"{self.root}/{version}"

    def publish(self, local_dir: Path, version: str) -> None:
        if self._complete(version):
            raise FileExistsError(f"model version {version} already under {self.root} (versions never change)")
        for path in _files(local_dir):
            self.fs.put_file(str(path), self._key(version, path.relative_to(local_dir).as_posix()))
        self.fs.pipe_file(self._key(version, COMPLETE_MARKER), version.encode())

    def versions(self) -> list[str]:
        self.fs.invalidate_cache()
        found = []
        for path in self.fs.glob(f"{self.root}/v*/{COMPLETE_MARKER}"):
            name = str(path).rstrip("/").split("/")[-2]
            try:
                version_number(name)
            except ValueError:
                continue
            found.append(name)
        return sorted(set(found), key=version_number)

    def _complete(self, version: str) -> bool:
        self.fs.invalidate_cache()
        return bool(self.fs.exists(self._key(version, COMPLETE_MARKER)))

    def fetch(self, version: str) -> Path:
        cached = self.cache_dir / version
        if cached.is_dir():
            return cached
        if not self._complete(version):
            raise FileNotFoundError(f"no complete model version {version} under {self.root}")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / f".{version}.{uuid.uuid4().hex}.tmp"
        try:
            prefix = str(self.fs._strip_protocol(self._key(version))).rstrip("/") + "/"
            for remote in self.fs.find(self._key(version)):
                relative = str(remote)[len(prefix) :]
                if relative == COMPLETE_MARKER:
                    continue
                local = tmp / relative
                local.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(remote, str(local))
            try:
                os.replace(tmp, cached)
            except OSError:
                if not cached.is_dir():  # another reader did not put it in place first
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._trim_cache(keep=version)
        return cached

    def cached_versions(self) -> list[str]:
        if not self.cache_dir.exists():
            return []
        return list_versions(self.cache_dir)

    def _trim_cache(self, keep: str) -> None:
        cached = self.cached_versions()
        spare = set(cached[-self.cache_versions :]) | {keep}
        for version in cached:
            if version in spare or len(cached) <= self.cache_versions:
                continue
            doomed = self.cache_dir / f".{version}.{uuid.uuid4().hex}.deleting"
            os.replace(self.cache_dir / version, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            cached.remove(version)

    def delete(self, version: str) -> None:
        marker = self._key(version, COMPLETE_MARKER)
        if self.fs.exists(marker):
            self.fs.rm_file(marker)
        self.fs.invalidate_cache()
        if self.fs.exists(self._key(version)):
            self.fs.rm(self._key(version), recursive=True)


def model_store(settings: Settings) -> ModelStore:
    """The store ``settings.models`` names: the local models directory unless ``store_url`` is set."""
    cfg = settings.models
    if not cfg.store_url:
        return LocalModelStore(settings.models_dir)
    protocol, _, path = cfg.store_url.partition("://")
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        if cfg.endpoint_url:
            options["endpoint_url"] = cfg.endpoint_url
        if cfg.access_key is not None:
            options["key"] = cfg.access_key.get_secret_value()
        if cfg.secret_key is not None:
            options["secret"] = cfg.secret_key.get_secret_value()
        protocol = "s3"
    fs = fsspec.filesystem(protocol, **options)
    return RemoteModelStore(fs, path, settings.state_dir / "model-cache", cfg.cache_versions)
