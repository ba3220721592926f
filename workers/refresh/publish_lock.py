"""One publisher per alias across processes: an ``flock`` on ``<state_dir>/refresh/publish-<alias>.lock``.

The refresh worker (a whole round: state, training, publish, state save), ``POST /rec/insert_data``
and ``/rec/drop`` in the gateway, and ``mindstream rollback`` all write the live alias, the shadow
collections and ``refresh/state.json``. Each of them holds this lock while it does, so two of them
can never build the same version's collection or overwrite each other's state. The kernel drops the
lock when its holder dies (even by ``kill -9``): a crash never leaves it stuck.

``flock`` is only as shared as the file system: processes on one host, or containers sharing one
local volume (the compose stack mounts one ``mindstream-state`` volume into every worker). It is
not reliable on NFS; a multi-host deployment needs one refresh worker and the gateway's admin
endpoints switched off (no token), or an external lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class PublishBusy(RuntimeError):
    """Another process (or thread) holds the publish lock."""


def lock_path(refresh_dir: Path, alias: str) -> Path:
    return refresh_dir / f"publish-{alias}.lock"


@contextlib.contextmanager
def publish_lock(path: Path, *, wait: bool) -> Iterator[None]:
    """Hold the lock for the block; ``wait=False`` raises :class:`PublishBusy` instead of queueing.

    Every call opens the file anew, so two threads of one process exclude each other too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise PublishBusy(f"another publisher (pid {holder}) is working on this alias") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
