"""``nice_threads``: every thread of the process is reniced except those kept (run in a child
process: niceness cannot be raised back without privileges)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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
