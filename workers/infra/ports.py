"""Loopback ports for the embedded servers: pick a free one, tell whether one accepts connections."""

from __future__ import annotations

import socket

__all__ = ["accepts", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free right now (racy by nature: bind soon after)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether something listens on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
