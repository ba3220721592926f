"""Tests that need a system tool skip without it, except where CI installed it.

``.ci/run`` exports ``MINDSTREAM_REQUIRE_TOOLS`` with the tools it installed (or found) successfully,
comma-separated (``promtool``, ``chromium``). A test needing one of those fails instead of skipping
when the tool is missing after all: a skip there would hide a broken CI image or a broken check.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_ENV = "MINDSTREAM_REQUIRE_TOOLS"


def required_tools() -> set[str]:
    return {t.strip() for t in os.environ.get(REQUIRE_ENV, "").split(",") if t.strip()}


def missing_tool(tool: str, reason: str) -> NoReturn:
    """Skip (a developer machine without ``tool``), or fail when ``MINDSTREAM_REQUIRE_TOOLS`` names it."""
    if tool in required_tools():
        pytest.fail(f"{reason} ({REQUIRE_ENV} says CI installed {tool}: it must be there)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)
