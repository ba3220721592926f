"""``ops/milvus/user.yaml``: the retention and garbage-collection settings ``docs/retention.md`` asks operators
to set, as the Milvus in compose names them, mounted where Milvus reads it.

Docker cannot run here, so the file is read (PyYAML) and compared with the operator section of
``docs/retention.md`` and with the key names of Milvus 3.0 (sources in the file's header)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
USER_YAML = ROOT / "ops" / "milvus" / "user.yaml"
RETENTION_DOC = ROOT / "docs" / "retention.md"
COMPOSE = ROOT / "docker-compose.yml"
SECTION = "### Production Milvus: what an operator should set"
# Milvus' configuration path in its image (Milvus docs, "Configure Milvus with Docker Compose").
MOUNT_TARGET = "/milvus/configs/user.yaml"

# Each key of user.yaml -> the words docs/retention.md's operator section uses for it. The Milvus 3.0 names:
# dataCoord.gc.* from the v3.0.x configuration reference; the WAL's retention from Milvus' paramtable
# (woodpecker.logstore.retentionPolicy.ttl, fallback streaming.walTruncate.retentionInterval).
NAMED_BY_THE_DOC = {
    "dataCoord.gc.interval": "gc.interval",
    "dataCoord.gc.dropTolerance": "dataCoord.gc.dropTolerance",
    "woodpecker.logstore.retentionPolicy.ttl": "Woodpecker",
}
# Keys Milvus 3.x ignores (its WAL is Woodpecker): a value set there would look like a fix and be none.
IGNORED_BY_MILVUS_3 = ("rocksmq.", "pulsar.", "natsmq.")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def _duration_s(value: str | int) -> float:
    """Go duration strings as Milvus parses them ("6h", "30m", "90s", "1h30m"); a bare number is seconds."""
    if isinstance(value, int):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return _flatten(yaml.safe_load(USER_YAML.read_text()))


@pytest.fixture(scope="module")
def operator_section() -> str:
    text = RETENTION_DOC.read_text()
    assert SECTION in text, f"docs/retention.md lost its section {SECTION!r}"
    return text.split(SECTION, 1)[1].split("\n### ", 1)[0]


def test_keys_are_the_ones_the_doc_names(keys: dict[str, Any], operator_section: str) -> None:
    assert set(keys) == set(NAMED_BY_THE_DOC), "a key without its place in docs/retention.md, or one missing"
    for key, words in NAMED_BY_THE_DOC.items():
        assert words in operator_section, f"{key}: docs/retention.md's operator section does not name {words!r}"
    assert "message queue's retention" in operator_section
    assert not [k for k in keys if k.startswith(IGNORED_BY_MILVUS_3)]


def test_values_follow_the_doc(keys: dict[str, Any], operator_section: str) -> None:
    drop = keys["dataCoord.gc.dropTolerance"]
    interval = keys["dataCoord.gc.interval"]
    # "keep it above the longest a reader may still hold a dropped collection ..., e.g. 10-30 minutes"
    assert "10-30 minutes" in operator_section
    assert isinstance(drop, int) and 600 <= drop <= 1800, drop
    assert isinstance(interval, int) and 0 < interval <= drop, "the collector must run within the tolerance"
    # "long enough for a restart to replay ... (hours, not minutes ...)"
    assert "hours, not minutes" in operator_section
    ttl = _duration_s(keys["woodpecker.logstore.retentionPolicy.ttl"])
    assert 3600 <= ttl < 72 * 3600, "hours, and below the 72 h default (the point of setting it)"


def test_the_file_is_mounted_where_milvus_reads_it() -> None:
    milvus = yaml.safe_load(COMPOSE.read_text())["services"]["milvus"]
    mounts = [str(v).split(":") for v in milvus["volumes"]]
    assert ["./ops/milvus/user.yaml", MOUNT_TARGET, "ro"] in mounts


def test_etcd_keeps_what_the_doc_says_compose_sets() -> None:
    """docs/retention.md: etcd auto-compaction, snapshot count and backend quota are already set by compose."""
    env = yaml.safe_load(COMPOSE.read_text())["services"]["etcd"]["environment"]
    assert env["ETCD_AUTO_COMPACTION_MODE"] == "revision"
    assert int(env["ETCD_AUTO_COMPACTION_RETENTION"]) > 0
    assert int(env["ETCD_SNAPSHOT_COUNT"]) == 50000
    assert int(env["ETCD_QUOTA_BACKEND_BYTES"]) == 4 * 1024**3


def test_duration_parsing() -> None:
    assert _duration_s("6h") == 21600
    assert _duration_s("1h30m") == 5400
    assert _duration_s(90) == 90
    with pytest.raises(AssertionError):
        _duration_s("6 hours")
