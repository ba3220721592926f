"""Shared fixtures: the real embedded Milvus and the real embedded Kafka-protocol broker; the run order."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures_kafka import *  # noqa: F403
from tests.fixtures_milvus import *  # noqa: F403


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with a ``slow`` test run first; each file's tests stay together and in their order.

    ``./scripts/test.sh`` runs two xdist workers that take whole files (``--dist loadfile``): a file of a
    minute or more handed out last would leave one worker running alone at the end of the run.
    """
    first: dict[Path, int] = {}  # file -> position of its first test
    for n, item in enumerate(items):
        first.setdefault(item.path, n)
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.path not in slow, first[item.path]))
