"""Helpers shared by the benchmarks: machine description, peak RSS, JSON output, disk use by part."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from workers.infra.vector_store import VectorStore

# MINDSTREAM_BENCH_RESULTS moves the output folder (``bench.run_all --quick`` writes smoke runs elsewhere).
RESULTS = Path(os.environ.get("MINDSTREAM_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def machine() -> dict[str, Any]:
    """Where and when a result was measured, and on which code: ``commit`` is None outside a git checkout."""
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit(),
    }


BENCH_DIR = Path(__file__).resolve().parent


def commit(where: Path = BENCH_DIR) -> str | None:
    """``git rev-parse HEAD`` of the checkout ``where`` lies in (default: the benchmarks'); None when it is
    not a git checkout or there is no git."""
    try:
        done = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def peak_rss_mb() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def emit(name: str, payload: dict[str, Any], *, envelope: bool = True) -> None:
    """Print the JSON summary and keep a copy under bench/results/<name>.json; ``envelope`` adds the
    benchmark's name and the machine (off where an issue names the file's exact keys)."""
    if envelope:
        payload = {"benchmark": name, "machine": machine(), **payload}
    text = json.dumps(payload, indent=2, default=str)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(text + "\n")
    sys.stdout.write(text + "\n")


def write_json(folder: Path, name: str, payload: dict[str, Any]) -> None:
    """As ``emit(name, payload, envelope=False)``, into ``folder`` (``--results``, ``<results>/quick``)."""
    text = json.dumps(payload, indent=2, default=str)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(text + "\n")
    sys.stdout.write(text + "\n")


def index_and_load(store: VectorStore, name: str, poll_s: float = 0.2) -> None:
    """Build the index of a flushed collection, wait until every row is indexed, load it."""
    rows = int(store.client.get_collection_stats(name).get("row_count", 0))  # flushed: exact
    store.build_index(name, rows=rows)
    while store.client.describe_index(name, "vector").get("pending_index_rows", 0):
        time.sleep(poll_s)
    store.load(name)


def _allocated(root: Path, skip: set[str], seen: set[tuple[int, int]]) -> int:
    """Bytes allocated (``st_blocks * 512``) to the regular files under ``root``, minus the ``skip`` trees;
    a file or directory that vanishes during the walk (a rotated log, a compacted segment) is left out."""
    total = 0
    todo = [str(root)]
    while todo:
        directory = todo.pop()
        try:
            entries = os.scandir(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.path not in skip:
                            todo.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        if (st.st_dev, st.st_ino) not in seen:  # a hard link counts once
                            seen.add((st.st_dev, st.st_ino))
                            total += st.st_blocks * 512
                except FileNotFoundError:
                    continue
    return total


def disk_usage(parts: Mapping[str, Path], others: Iterable[Path]) -> dict[str, int]:
    """Disk use in bytes per part: each of ``parts`` (name -> directory; a missing one is 0), ``other`` =
    what else lies under ``others`` (the part directories left out), ``total`` = their sum. Sizes are the
    blocks allocated to regular files (``st_blocks * 512``: what ``du`` counts, so a sparse or
    preallocated file counts what it holds on disk, not its length); symlinks are not followed."""
    seen: set[tuple[int, int]] = set()
    dirs = {name: Path(os.path.realpath(d)) for name, d in parts.items()}
    skip = {str(d) for d in dirs.values()}
    out = {name: _allocated(d, skip - {str(d)}, seen) for name, d in dirs.items()}
    roots = [Path(os.path.realpath(r)) for r in others]
    roots = [r for r in roots if not any(o != r and r.is_relative_to(o) for o in roots)]  # nested: walked once
    out["other"] = sum(_allocated(r, skip, seen) for r in dict.fromkeys(roots) if str(r) not in skip)
    out["total"] = sum(out.values())
    return out


_Task = TypeVar("_Task")
_Result = TypeVar("_Result")


def run_in_processes(fn: Callable[[_Task], _Result], tasks: Sequence[_Task], jobs: int) -> Iterator[_Result]:
    """``fn(task)`` for every task, yielded as each finishes: in this process when ``jobs`` <= 1, else in
    ``jobs`` fresh spawned processes at a time (one task per process: no state carried between runs)."""
    if jobs <= 1:
        for task in tasks:
            yield fn(task)
        return
    pool = mp.get_context("spawn").Pool(jobs, maxtasksperchild=1)
    finished = False
    try:
        yield from pool.imap_unordered(fn, tasks)
        finished = True
    finally:
        if finished:
            pool.close()  # let the workers exit on their own: no SIGTERM noise
        else:
            pool.terminate()
        pool.join()
