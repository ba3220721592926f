"""Fuzz and property tests: bad input of every shape must end as a typed error, never a crash.

``FUZZ`` is the hypothesis profile of this package: derandomized (the same examples on every run, so
CI is stable), no deadline (the machine is shared), a modest example budget.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

__all__ = ["FUZZ", "fuzz"]

_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=_CHECKS, database=None)


def fuzz(max_examples: int) -> settings:
    """``FUZZ`` with another example budget."""
    return settings(FUZZ, max_examples=max_examples)
