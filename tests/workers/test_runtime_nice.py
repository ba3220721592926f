"""``nice_threads``: every thread of the process is reniced except those kept (run in a child
process: niceness cannot be raised back without privileges)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.required_tools import lacks_sys_nice, requires_sys_nice
from workers.runtime import ThreadRenicer, renice_named_threads

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import json, os, threading
    from workers.runtime import nice_threads

    ready, done = threading.Barrier(3), threading.Event()
    ids = {}
    def park(name):
        ids[name] = threading.get_native_id()
        ready.wait()
        done.wait()
        if name == "other":  # a thread started now by a reniced thread inherits its niceness
            t = threading.Thread(target=lambda: ids.__setitem__("child", os.getpriority(os.PRIO_PROCESS, 0)))
            t.start(); t.join()
    threads = [threading.Thread(target=park, args=(n,)) for n in ("kept", "other")]
    for t in threads:
        t.start()
    ready.wait()
    prio = lambda tid: os.getpriority(os.PRIO_PROCESS, tid)
    before = {n: prio(t) for n, t in ids.items()} | {"main": prio(threading.get_native_id())}
    changed = nice_threads(5, keep={ids["kept"]})
    after = {n: prio(t) for n, t in ids.items()} | {"main": prio(threading.get_native_id())}
    done.set()
    for t in threads:
        t.join()
    print(json.dumps({"before": before, "after": after, "child": ids["child"], "changed": changed}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread niceness is Linux's")
def test_every_thread_but_the_kept_one_is_reniced() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    before, after = got["before"], got["after"]
    assert after["kept"] == before["kept"]
    assert after["other"] == min(19, before["other"] + 5)
    assert after["main"] == min(19, before["main"] + 5)
    assert got["child"] == after["other"]
    assert got["changed"] >= 2


NAMED = textwrap.dedent(
    """
    import ctypes, os, sys, threading
    libc = ctypes.CDLL(None)
    done = threading.Event()
    def park(name, started):
        libc.prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME: the thread's comm
        print(f"{name} {threading.get_native_id()}", flush=True)
        started.set()
        done.wait()
    def start(name):
        started = threading.Event()
        threading.Thread(target=park, args=(name, started), daemon=True).start()
        started.wait()
    start("Knowhere_Build0"); start("Knowhere_Search")
    for line in sys.stdin:  # "start <name>" starts another thread; EOF ends the process
        start(line.split()[1])
    done.set()
    """
)


@dataclass
class Named:
    """The NAMED child: its pid, its threads' ids by name, and a way to start one more."""

    proc: subprocess.Popen[str]
    tids: dict[str, int]

    def prio(self, name: str) -> int:
        return os.getpriority(os.PRIO_PROCESS, self.tids[name])

    def start(self, name: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"start {name}\n")
        self.proc.stdin.flush()
        started, tid = self.proc.stdout.readline().split()
        self.tids[started] = int(tid)


@pytest.fixture
def named() -> Iterator[Named]:
    if not Path("/proc/self/task").is_dir():
        pytest.skip("per-thread niceness is Linux's")
    child = subprocess.Popen(
        [sys.executable, "-c", NAMED], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        tids = {name: int(tid) for name, tid in (child.stdout.readline().split() for _ in range(2))}
        yield Named(child, tids)
    finally:
        child.kill()
        child.wait(timeout=10)


def _room(named: Named) -> int:
    base = named.prio("Knowhere_Search")  # the suite may itself run niced
    if base > 16:
        pytest.skip(f"running at niceness {base}: no room to raise it")
    return base


def test_named_threads_of_another_process_are_reniced_and_kept_so(named: Named) -> None:
    """``renice_named_threads`` changes only the threads named by the prefix; ``ThreadRenicer`` also
    catches a thread that starts later. (Raising a niceness needs no privilege.)"""
    base = _room(named)
    assert renice_named_threads(named.proc.pid, ("Knowhere_Build",), base + 2) == (1, 0)
    assert named.prio("Knowhere_Build0") == base + 2 and named.prio("Knowhere_Search") == base
    assert renice_named_threads(named.proc.pid, ("Knowhere_Build",), base + 2) == (0, 0), "already there"
    renicer = ThreadRenicer(named.proc.pid, ("Knowhere_Build",), base + 3, every_s=0.1)
    try:
        named.start("Knowhere_Build1")
        deadline = time.monotonic() + 10
        while named.prio("Knowhere_Build1") != base + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert named.prio("Knowhere_Build1") == named.prio("Knowhere_Build0") == base + 3
        assert named.prio("Knowhere_Search") == base
    finally:
        renicer.stop()
    pid = named.proc.pid
    named.proc.kill()
    named.proc.wait(timeout=10)
    assert renice_named_threads(pid, ("Knowhere_Build",), 9) == (0, 0), "a process that is gone: nothing"


def test_with_cap_sys_nice_a_niceness_is_lowered_again(named: Named) -> None:
    """The capability's case (what gives the embedded Milvus's search threads back their priority)."""
    requires_sys_nice()
    base = _room(named)
    assert renice_named_threads(named.proc.pid, ("Knowhere_Build",), base + 2) == (1, 0)
    assert renice_named_threads(named.proc.pid, ("Knowhere_Build",), base + 1) == (1, 0)
    assert named.prio("Knowhere_Build0") == base + 1 and named.prio("Knowhere_Search") == base


def test_without_cap_sys_nice_lowering_is_refused_and_counted(named: Named) -> None:
    """The fallback case: the thread keeps its niceness, the refusal is counted, nothing raises."""
    lacks_sys_nice("test_with_cap_sys_nice_a_niceness_is_lowered_again")
    base = _room(named)
    assert renice_named_threads(named.proc.pid, ("Knowhere_Build",), base + 2) == (1, 0)
    assert renice_named_threads(named.proc.pid, ("Knowhere_Build",), base + 1) == (0, 1)
    assert named.prio("Knowhere_Build0") == base + 2 and named.prio("Knowhere_Search") == base
