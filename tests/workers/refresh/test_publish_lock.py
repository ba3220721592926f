"""The cross-process publish lock (real processes, real flock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.background import Background
from tests.waiting import wait_until
from workers.refresh.publish_lock import PublishBusy, lock_path, publish_lock

HOLDER = """
import sys, time
from pathlib import Path
from tests.background import Background
from tests.waiting import wait_until
from workers.refresh.publish_lock import publish_lock
with publish_lock(Path(sys.argv[1]), wait=True):
    print("held", flush=True)
    time.sleep(60)
"""


def _hold_in_child(path: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_lock_file_lives_with_the_refresh_state(tmp_path: Path) -> None:
    assert lock_path(tmp_path / "refresh", "items") == tmp_path / "refresh" / "publish-items.lock"


def test_another_process_holding_it_makes_us_busy_until_it_dies(tmp_path: Path) -> None:
    path = lock_path(tmp_path, "items")
    child = _hold_in_child(path)
    try:
        with pytest.raises(PublishBusy, match=f"pid {child.pid}"), publish_lock(path, wait=False):
            pass
    finally:
        os.kill(child.pid, signal.SIGKILL)  # a crashed holder: the kernel releases its lock
        child.wait()
    with publish_lock(path, wait=False):
        assert path.read_text().strip() == str(os.getpid())


def test_waiting_holder_gets_it_when_released_and_threads_exclude_each_other(tmp_path: Path) -> None:
    path = lock_path(tmp_path, "items")
    order: list[str] = []

    def second() -> None:
        with publish_lock(path, wait=True):
            order.append("second")

    with publish_lock(path, wait=True):
        worker = Background(second, "second holder").start()
        wait_until(lambda: _waiting_on(path), 10, "the second holder blocked on the lock", every=0.01, watch=[worker])
        with pytest.raises(PublishBusy), publish_lock(path, wait=False):  # same process, another open: excluded too
            pass
        order.append("first")
    worker.join(5)
    assert order == ["first", "second"]


def _waiting_on(path: Path) -> bool:
    """A flock request on ``path`` is blocked: the kernel lists it with ``->`` in /proc/locks."""
    inode = f":{path.stat().st_ino} "
    return any("-> FLOCK" in line and inode in line for line in Path("/proc/locks").read_text().splitlines())
