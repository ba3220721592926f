"""``python -m tests.faults.refresh_crash <mindstream args>``: the ``mindstream`` CLI with one
deterministic crash point, for the refresh phase tests.

``MINDSTREAM_FAULT_CRASH_AT`` names where the process dies with ``os._exit(137)`` (what ``kill -9``
leaves behind: no ``finally``, no flush, no state write) during a refresh *round* (bootstrap is
never interrupted):

* ``train``        - incremental training ran, the checkpoint is not written yet
* ``export``       - checkpoint ``v<N+1>`` written, item table being exported, no collection yet
* ``insert``       - shadow created and the first rows inserted; no flush, no index
* ``index``        - shadow flushed and indexed, not loaded yet
* ``verify``       - shadow loaded, verification starting
* ``swap``         - verified; ``alter_alias`` not called yet
* ``after-swap``   - ``alter_alias`` done; the refresh state (cursor, superseded list) not saved

and in a delta (``refresh.publication = delta``, the live collection written in place):

* ``delta-insert``   - the first new rows of the next generation inserted
* ``delta-close``    - the first rows they replace closed
* ``delta-verify``   - every row written, verification starting
* ``delta-announce`` - verified; the announcement not written
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import workers.refresh.publish
import workers.refresh.worker
from workers.cli import main
from workers.infra.vector_store import VectorStore
from workers.refresh.delta import DeltaPublisher
from workers.refresh.generations import Generations
from workers.refresh.publish import Publisher

PHASES = ("train", "export", "insert", "index", "verify", "swap", "after-swap")
DELTA_PHASES = ("delta-insert", "delta-close", "delta-verify", "delta-announce")
CRASH_CODE = 137


def _die(phase: str) -> None:
    sys.stderr.write(f"FAULT: crashing at {phase}\n")
    sys.stderr.flush()
    os._exit(CRASH_CODE)


def _crash_before(fn: Callable[..., Any], phase: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _die(phase)

    return wrapper


def _crash_after(fn: Callable[..., Any], phase: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        fn(*args, **kwargs)
        _die(phase)

    return wrapper


def _crash_after_write(fn: Callable[..., Any], phase: str) -> Callable[..., Any]:
    """``write_rows`` crashing after its first insert (``delta-insert``) or upsert (``delta-close``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if bool(kwargs.get("upsert")) == (phase == "delta-close"):
            _die(phase)
        return result

    return wrapper


def arm(phase: str) -> None:
    """Install the crash point; the publisher is only wrapped inside ``run_round`` (not bootstrap)."""
    if phase not in PHASES + DELTA_PHASES:
        choices = ", ".join(PHASES + DELTA_PHASES)
        raise SystemExit(f"MINDSTREAM_FAULT_CRASH_AT must be one of {choices}, not {phase!r}")
    if phase == "train":
        workers.refresh.worker.train = _crash_after(workers.refresh.worker.train, phase)
        return
    targets: dict[str, tuple[Any, str, Callable[..., Any]]] = {
        "export": (workers.refresh.publish, "item_table", _crash_before),
        "insert": (VectorStore, "insert", _crash_after),
        "index": (VectorStore, "load", _crash_before),
        "verify": (Publisher, "verify", _crash_before),
        "swap": (VectorStore, "point_alias", _crash_before),
        "after-swap": (VectorStore, "point_alias", _crash_after),
        "delta-insert": (VectorStore, "write_rows", _crash_after_write),
        "delta-close": (VectorStore, "write_rows", _crash_after_write),
        "delta-verify": (DeltaPublisher, "_verify", _crash_before),
        "delta-announce": (Generations, "save", _crash_before),
    }
    owner, name, how = targets[phase]
    original_round = workers.refresh.worker.RefreshWorker.run_round

    @functools.wraps(original_round)
    def run_round(self: workers.refresh.worker.RefreshWorker, *args: Any, **kwargs: Any) -> Any:
        setattr(owner, name, how(getattr(owner, name), phase))
        return original_round(self, *args, **kwargs)

    workers.refresh.worker.RefreshWorker.run_round = run_round  # type: ignore[method-assign]


if __name__ == "__main__":
    crash_at = os.environ.get("MINDSTREAM_FAULT_CRASH_AT")
    if crash_at:
        arm(crash_at)
    raise SystemExit(main(sys.argv[1:]))
