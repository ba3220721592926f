"""Loopback ports for the embedded servers: pick a free one, tell whether one accepts connections.

A port is picked *outside* the kernel's ephemeral range (``net.ipv4.ip_local_port_range``). A port from
``bind(0)`` lies inside it, and between the moment it is picked and the moment a server binds it (a Kafka
node of a three-node cluster binds seconds later, after every node is formatted) any outgoing connection
on the machine may get that same port as its source port, and the server then fails with "Address already
in use". Outside the range only another listener can take it.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path
from typing import Final

__all__ = ["accepts", "free_port", "listen_range"]

_EPHEMERAL_RANGE_FILE: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST: Final = 10_000  # below: well-known and registered services people run on their machines
_HIGHEST: Final = 65_535
_MIN_SPAN: Final = 2_000  # a range this small is not worth avoiding collisions in: fall back to bind(0)
_TRIES: Final = 200

# Not the global generator: a test's random.seed() must not make two processes pick alike.
_random: Final = random.SystemRandom()
_given: set[int] = set()
_lock = threading.Lock()


def listen_range(ephemeral: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """The widest span of ports in [10000, 65535] outside the ephemeral range; None: use ``bind(0)``."""
    if ephemeral is None:
        try:
            low, high = (int(x) for x in _EPHEMERAL_RANGE_FILE.read_text().split())
        except (OSError, ValueError):
            return None
        ephemeral = (low, high)
    low, high = ephemeral
    spans = [(_LOWEST, low - 1), (high + 1, _HIGHEST)]
    best = max(spans, key=lambda span: span[1] - span[0])
    return best if best[1] - best[0] >= _MIN_SPAN else None


def _binds(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now, outside the ephemeral range, not handed out before by this process."""
    span = listen_range()
    with _lock:
        if span is not None:
            for _ in range(_TRIES):
                port = _random.randint(*span)
                if port not in _given and _binds(host, port):
                    _given.add(port)
                    return port
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        _given.add(port)
        return port


def accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether something listens on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
