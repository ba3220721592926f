"""Configuration of the embedded Milvus server: the PyPI ``milvus`` package, extra "embedded".

The production image does not install that package (compose runs Milvus as a service), so
:mod:`workers.infra.milvus_server` imports this module only when it starts an embedded server.

Long runs: Milvus' defaults are sized for a cluster that keeps days of history; the embedded
server of a dev box runs for hours or days with a new collection every round, so
:data:`EMBEDDED_LIMITS` and :data:`EMBEDDED_ETCD` bound what it keeps (docs/retention.md: what
each default did, what these change, and what a production operator should set instead).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from milvus import MilvusServerConfig

__all__ = ["EmbeddedConfig"]

_COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
_GRACEFUL_STOP_S = 3  # Milvus' own deadline after SIGTERM (default 1800 s; its shutdown can hang)

# milvus.yaml keys (each must exist in the package's template) -> value.
EMBEDDED_LIMITS: Final[dict[str, int | float]] = {
    # rocksmq (the embedded log of every insert, delete and time tick) deletes only pages that every
    # consumer acknowledged, and only past its retention: defaults 3 days / 8 GB, 64 MB pages (a page
    # is deletable once full), a rocksdb compaction once a day (until then deletes free nothing) and a
    # block cache of 6% of the host's memory. 30 minutes is far longer than the data node's checkpoint
    # lag (it syncs every 10 minutes at most, and every swap flushes), so a restart still replays what
    # it needs. Under steady rounds the time bound never applies: a page's ack time is refreshed as each
    # new collection's consumers read the channel, so the oldest page of every DML topic was acked seconds
    # to minutes before each check and no page was ever cleaned (3rd days run, docs/retention.md). The size
    # bound does apply (to acked pages): 128 MB per topic, 16 DML topics, ~2 GB at most; a version is
    # 26 MB at 100k items (256 MB at 1M, spread over the topics of its shards).
    "rocksmq.retentionTimeInMinutes": 30,
    "rocksmq.retentionSizeInMB": 128,
    "rocksmq.rocksmqPageSize": 16 << 20,
    "rocksmq.compactionInterval": 1800,
    "rocksmq.lrucacheratio": 0.01,
    # Binlogs of dropped collections (one per superseded version) stay dropTolerance (default 3 h)
    # after the drop, and the collector runs every gc.interval (default 1 h).
    "dataCoord.gc.interval": 600,
    "dataCoord.gc.dropTolerance": 600,
}
# The embedded etcd's own config (etcd's defaults: never compacts, keeps 100k raft entries in memory):
# what Milvus' standalone compose file gives its etcd, as the production stack does.
EMBEDDED_ETCD: Final[Mapping[str, str | int]] = {
    "auto-compaction-mode": "revision",
    "auto-compaction-retention": "1000",
    "quota-backend-bytes": 4 << 30,
    "snapshot-count": 50_000,
}


class EmbeddedConfig(MilvusServerConfig):
    """The package's config plus our own ports for the embedded etcd.

    Milvus' embedded etcd ignores ``etcd.endpoints`` and listens on etcd's defaults (2379 client,
    2380 peer) unless ``etcd.config.path`` names an etcd config file, so a second server would
    die at start-up with "bind: address already in use". We resolve a free client and peer port
    and write that file next to ``milvus.yaml``.
    """

    def __init__(
        self,
        base_dir: Path,
        port: int,
        host: str,
        *,
        session_ttl_s: int,
        overrides: Mapping[str, bool | int | float | str] | None = None,
    ) -> None:
        super().__init__(data_dir=str(base_dir), proxy_port=port)
        for component in _COMPONENTS:
            self.set(f"{component}.ip", host)
        self.set("common.gracefulStopTimeout", _GRACEFUL_STOP_S)
        self.set("common.session.ttl", session_ttl_s)
        self._check_overrides(overrides or {})
        # what write_config must find in milvus.yaml: the shipped limits, then the operator's overrides
        self.expected: dict[str, str] = {}
        for key, value in {**EMBEDDED_LIMITS, **(overrides or {})}.items():
            text = _yaml_text(value)
            self.set(key, text)
            self.expected[key] = text
        self.etcd_peer_port = 0

    def _check_overrides(self, overrides: Mapping[str, object]) -> None:
        """Refuse what would be ignored or would break the embedded server: a key its template lacks (the
        package rewrites only keys it has) or one the package and this class manage (ports, addresses,
        directories: ``{{ ... }}`` placeholders in the template, ``*.ip``, the etcd config path)."""
        template = self.template_text
        unknown = [key for key in overrides if yaml_value(template, key) is None]
        if unknown:
            raise ValueError(
                f"milvus.embedded_config: {unknown} not in this milvus package's milvus.yaml "
                f"(milvus {_package_version()}): check the key's spelling and section"
            )
        managed = [
            key
            for key in overrides
            if "{{" in (yaml_value(template, key) or "")
            or key in {f"{c}.ip" for c in _COMPONENTS} | {"etcd.config.path"}
        ]
        if managed:
            raise ValueError(
                f"milvus.embedded_config: {managed} are set by the embedded server itself (ports, "
                "addresses, directories): use an external Milvus (MINDSTREAM_MILVUS__URI) to choose them"
            )

    def resolve_port(self, port_start: int) -> tuple[int | None, socket.socket | None]:
        """Internal ports: let the OS pick free ones.

        The package probes upwards from Milvus' defaults (19529, 9091, 2379, ...), so a second
        server squats on well-known ports such as 19530 that a later server may be configured for.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port: int = sock.getsockname()[1]
        return port, sock

    def try_bind_port(self, port: int) -> socket.socket | None:
        """The package's free-port probe, with SO_REUSEADDR.

        Without it, a port whose old connections sit in TIME_WAIT (every restart on the same
        port, for a minute) reads as busy, although Milvus itself (Go, SO_REUSEADDR) can listen.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            sock.close()
            return None
        return sock

    def resolve_all_listen_ports(self) -> None:
        super().resolve_all_listen_ports()
        peer_port, sock = self.resolve_port(0)
        self.listen_ports["etcd_peer_port"] = (peer_port, sock)  # released with the others
        self.etcd_peer_port = int(peer_port or 0)

    def write_config(self) -> None:
        super().write_config()
        configs = Path(self.base_data_dir) / "configs"
        client_url = f"http://127.0.0.1:{self.get('etcd_port')}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        etcd_yaml = configs / "embed-etcd.yaml"
        etcd_yaml.write_text(
            f"name: default\n"
            f"listen-client-urls: {client_url}\nadvertise-client-urls: {client_url}\n"
            f"listen-peer-urls: {peer_url}\ninitial-advertise-peer-urls: {peer_url}\n"
            f"initial-cluster: default={peer_url}\n"
            + "".join(f"{key}: {_yaml_scalar(value)}\n" for key, value in EMBEDDED_ETCD.items()),
            encoding="utf-8",
        )
        milvus_yaml = configs / "milvus.yaml"
        text = milvus_yaml.read_text(encoding="utf-8")
        patched = text.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd_yaml}\n", 1)
        if patched == text:
            raise RuntimeError(f"no top-level etcd section in {milvus_yaml}")
        milvus_yaml.write_text(patched, encoding="utf-8")
        unset = [key for key, text in self.expected.items() if yaml_value(patched, key) != text]
        if unset:  # the package rewrites only keys its template has: a silent no-op otherwise
            raise RuntimeError(f"{milvus_yaml}: {unset} not set (missing from this milvus package's template?)")


def _yaml_text(value: bool | int | float | str) -> str:
    """A milvus.yaml value as the file spells it (booleans in YAML's lower case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("milvus")
    except PackageNotFoundError:
        return "unknown"


def _yaml_scalar(value: str | int) -> str:
    return f'"{value}"' if isinstance(value, str) and value.isdigit() else str(value)


def yaml_value(yaml_text: str, dotted: str) -> str | None:
    """The value text of key ``dotted`` (``a.b.c``) in ``yaml_text``, comment stripped; None if absent.
    Enough for milvus.yaml (two-space indentation, one key per line), not a YAML parser."""
    path: list[str] = []
    for line in yaml_text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or ":" not in stripped or stripped.startswith("-"):
            continue
        level = (len(line) - len(line.lstrip(" "))) // 2
        key, value = stripped.split(":", 1)
        path = [*path[:level], key.strip()]
        if ".".join(path) == dotted:
            return value.split("#", 1)[0].strip()
    return None
