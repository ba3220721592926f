"""Port picking: outside the ephemeral range, never the same port twice, a real free port."""

from __future__ import annotations

import socket

from workers.infra.ports import accepts, free_port, listen_range


def test_listen_range_is_the_widest_span_outside_the_ephemeral_range() -> None:
    assert listen_range((32768, 60999)) == (10_000, 32767)
    assert listen_range((10_000, 50_000)) == (50_001, 65_535)


def test_listen_range_gives_up_when_the_ephemeral_range_leaves_too_little() -> None:
    assert listen_range((1024, 65_000)) is None


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    span = listen_range()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    if span is not None:
        assert all(span[0] <= port <= span[1] for port in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[0]))
        sock.listen()
        assert accepts("127.0.0.1", ports[0])
