"""``requirements.lock``, the worker image's dependency set: every runtime dependency of ``pyproject.toml``
pinned (``==``) with hashes, versions inside pyproject's ranges, and the ``Dockerfile`` installing from it.

Written by ``ops/image/lock.sh``; nothing is installed here (the build's ``pip check`` verifies the closure).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def parse_lock(text: str) -> dict[str, tuple[Version, int]]:
    """Canonical name -> (pinned version, number of hashes). Fails on an entry that is not ``name==version``."""
    entries: dict[str, tuple[Version, int]] = {}
    current: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("--hash="):
            assert current is not None and HASH.match(line), raw
            version, hashes = entries[current]
            entries[current] = (version, hashes + 1)
            continue
        match = ENTRY.match(line)
        assert match, f"not a pinned entry: {raw!r}"
        current = canonicalize_name(match.group(1))
        assert current not in entries, f"{current} pinned twice"
        entries[current] = (Version(match.group(2)), len(HASH.findall(line)))
    return entries


@pytest.fixture(scope="module")
def lock() -> dict[str, tuple[Version, int]]:
    return parse_lock(LOCK.read_text())


def _runtime() -> list[Requirement]:
    return [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]


def test_every_runtime_dependency_is_pinned(lock: dict[str, tuple[Version, int]]) -> None:
    for req in _runtime():
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} (pyproject.toml) is not in requirements.lock: run ops/image/lock.sh"
        version, _ = lock[name]
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} is outside {req.specifier}"


def test_every_entry_has_hashes(lock: dict[str, tuple[Version, int]]) -> None:
    assert lock
    assert all(hashes >= 1 for _, hashes in lock.values()), [n for n, (_, h) in lock.items() if h == 0]


def test_no_extras_in_the_image(lock: dict[str, tuple[Version, int]]) -> None:
    """The image installs no extras: the embedded Milvus and the dev tools stay out of the lock (an extra's
    package that a runtime dependency needs anyway, e.g. httpx, may be there)."""
    extras = {
        canonicalize_name(Requirement(r).name): group
        for group, reqs in PYPROJECT["project"]["optional-dependencies"].items()
        for r in reqs
    }
    kept_out = {"milvus", "pytest", "ruff", "mypy", "selenium", "hypothesis", "matplotlib"}
    assert kept_out <= set(extras), "update the list: these are the extras' own packages"
    assert not kept_out & set(lock), sorted(kept_out & set(lock))


def test_dockerfile_installs_from_the_lock() -> None:
    text = DOCKERFILE.read_text()
    joined = re.sub(r"\\\n", " ", text)
    assert re.search(r"^COPY requirements\.lock \./$", text, re.M)
    assert re.search(r"pip install --require-hashes --no-deps -r requirements\.lock", joined)
    lock_at = text.index("requirements.lock")
    assert lock_at < text.index("COPY workers"), "the dependency layer comes before the code"
    assert re.search(r"pip install --no-deps \.(\s|$)", joined), "the project itself without resolving again"
    assert "pip check" in joined
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert "requirements.lock" not in ignored and "*.lock" not in ignored


def test_parse_lock_rejects_unpinned_lines() -> None:
    good = "a==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n"
    assert parse_lock(good) == {"a": (Version("1.0"), 1)}
    with pytest.raises(AssertionError, match="not a pinned entry"):
        parse_lock("a>=1.0\n")
