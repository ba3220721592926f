"""Tests that need a system tool skip without it, except where CI installed it.

``.ci/run`` exports ``MINDSTREAM_REQUIRE_TOOLS`` with the tools it installed (or found) successfully,
comma-separated (``promtool``, ``chromium``). A test needing one of those fails instead of skipping
when the tool is missing after all: a skip there would hide a broken CI image or a broken check.

The same goes for one capability: lowering a thread's niceness (``CAP_SYS_NICE``, or an
``RLIMIT_NICE`` of 20), which the embedded Milvus's search-thread priority needs. Its tests come in
pairs, one per case, so the summary says which case ran; the capability's case is required where
``MINDSTREAM_REQUIRE_TOOLS`` names ``cap_sys_nice``, and in CI (the variable is set) running as root.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE_ENV = "MINDSTREAM_REQUIRE_TOOLS"
SYS_NICE = "cap_sys_nice"
_CAP_SYS_NICE_BIT = 23  # linux/capability.h


def required_tools() -> set[str]:
    return {t.strip() for t in os.environ.get(REQUIRE_ENV, "").split(",") if t.strip()}


def missing_tool(tool: str, reason: str) -> NoReturn:
    """Skip (a developer machine without ``tool``), or fail when ``MINDSTREAM_REQUIRE_TOOLS`` names it."""
    if tool in required_tools():
        pytest.fail(f"{reason} ({REQUIRE_ENV} says CI installed {tool}: it must be there)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def can_lower_niceness() -> bool:
    """Whether this process may lower a niceness down to 0: ``CAP_SYS_NICE`` in its effective set (root
    usually has it, root in a default container does not), or an ``RLIMIT_NICE`` of 20 (``ulimit -e``)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    effective = next((int(line.split()[1], 16) for line in status.splitlines() if line.startswith("CapEff:")), 0)
    limit = resource.getrlimit(resource.RLIMIT_NICE)[0]
    return bool(effective >> _CAP_SYS_NICE_BIT & 1) or limit == resource.RLIM_INFINITY or limit >= 20


def sys_nice_required() -> bool:
    """The capability's case must run: named in ``MINDSTREAM_REQUIRE_TOOLS``, or CI running as root."""
    return SYS_NICE in required_tools() or (REQUIRE_ENV in os.environ and os.geteuid() == 0)


def requires_sys_nice() -> None:
    """At the start of a capability-case test: go on with the capability, else skip (fail where required)."""
    if can_lower_niceness():
        return
    reason = "lowering a niceness is not permitted here (no CAP_SYS_NICE, RLIMIT_NICE < 20): its fallback test ran"
    if sys_nice_required():
        pytest.fail(f"{reason}; CI runs as root and must test the capability's case", pytrace=False)
    pytest.skip(reason)


def lacks_sys_nice(capability_case: str) -> None:
    """At the start of a fallback-case test: go on without the capability, else skip naming the other case."""
    if can_lower_niceness():
        pytest.skip(f"this process may lower a niceness: {capability_case} tests that case instead")
