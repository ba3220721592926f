"""Dense vs sparse item ids: the same click stream, once with ids 1..N and once with ids drawn
uniformly from 1..2^63-1, through one refresh round each. Memory and time must follow the number of
items, never the magnitude of an id.

    python -m bench.vocabulary [--events 200000] [--items 20000] [--train-batches 300]
    python -m bench.vocabulary --quick

One embedded Milvus serves both runs; each run is its own process (so its peak RSS is its own): a
base model is trained on the first ``--base-events`` clicks and published (v1), the next ``--events``
clicks are written to the ingest state store, and one refresh round trains on them and publishes v2.
The RSS of the process is sampled every 50 ms during the round. ``--repeats`` runs of each mode
alternate (machine load drifts); the summary holds each mode's median round time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.common import emit

KEYS = ("distinct_items", "table_rows", "refresh_peak_rss_mb", "round_s", "milvus_rows")


class RssPeak:
    """Peak RSS of this process while the ``with`` block runs, sampled every ``every_s``."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, psutil.Process().memory_info().rss)


def run_mode(mode: str, uri: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One run (in this process): base model v1, then one refresh round over ``args.events`` clicks."""
    from model.checkpoint import open_checkpoint
    from model.config import MindConfig, TrainConfig
    from model.data.synthetic import SyntheticSpec, iter_events
    from model.data.types import Sequences
    from model.train import Trainer, train
    from model.vocab import ItemVocab
    from schemas.messages import ClickEvent
    from workers.infra.vector_store import VectorStore
    from workers.ingest.state_reader import StateReader
    from workers.ingest.state_store import PartitionStore
    from workers.refresh.worker import RefreshWorker
    from workers.settings import MilvusSettings, RefreshSettings, Settings

    total = args.base_events + args.events
    spec = SyntheticSpec(
        num_users=max(1, int(total / 20)),
        num_items=args.items,
        num_clusters=max(1, args.items // 100),
        sparse_ids=mode == "sparse",
        seed=11,
    )
    chunks = list(iter_events(spec))
    users = np.concatenate([c.user_ids for c in chunks])[:total]
    items = np.concatenate([c.item_ids for c in chunks])[:total]
    ts = np.concatenate([c.ts_ms for c in chunks])[:total]

    settings = Settings(
        state_dir=workdir / "state",
        mind=MindConfig(),
        train=TrainConfig(seed=3),
        milvus=MilvusSettings(uri=uri, alias=f"vocab_{mode}_{uuid.uuid4().hex[:6]}"),
        refresh=RefreshSettings(
            train_batches=args.train_batches,
            replay_users=0,
            max_events_per_round=args.events,
            quality_users=0,
        ),
    )
    # v1: a base model on the first clicks (users' sequences in time order, items through a vocabulary)
    b_users, b_items = users[: args.base_events], items[: args.base_events]
    order = np.lexsort((ts[: args.base_events], b_users))
    vocab = ItemVocab.from_ids(b_items[order])
    uid, starts = np.unique(b_users[order], return_index=True)
    seqs = Sequences(uid, np.append(starts, order.size).astype(np.int64), vocab.rows(b_items[order]), len(vocab))
    trainer = Trainer(seqs, settings.mind, settings.train, vocab=vocab)
    train(trainer, batches=args.base_batches, checkpoint_dir=None)
    trainer.checkpoint(workdir / "base", {}, best=True)
    base = open_checkpoint(workdir / "base", "latest")

    events = [
        ClickEvent(event_id=f"e{n}", user_id=int(u), item_id=int(i), ts=int(t))
        for n, (u, i, t) in enumerate(
            zip(users[args.base_events :], items[args.base_events :], ts[args.base_events :], strict=True)
        )
    ]
    part = PartitionStore.open(settings.state_dir, "clicks", 0)
    for lo in range(0, len(events), 50_000):
        part.apply(events[lo : lo + 50_000], "clicks", 0, last_offset=lo + min(50_000, len(events) - lo) - 1)
    part.close()
    del events

    with VectorStore(uri, settings.milvus) as store, StateReader(settings.state_dir, "clicks") as reader:
        worker = RefreshWorker(settings, store, reader)
        worker.bootstrap(base)
        began = time.perf_counter()
        with RssPeak() as peak:
            report = worker.run_round()
        round_s = time.perf_counter() - began
        if report is None or report.published is None:
            raise RuntimeError(f"the round did not publish: {report}")
        v2 = open_checkpoint(settings.models_dir, report.published.version)
        out = {
            "distinct_items": int(np.unique(items).size),
            "table_rows": v2.manifest.item_count,
            "refresh_peak_rss_mb": round(peak.peak / 2**20, 1),
            "round_s": round(round_s, 2),
            "milvus_rows": store.count(report.published.collection),
            "max_item_id": int(items.max()),
            "phases": report.as_dict()["phases"],
        }
        store.drop_alias(settings.milvus.alias)  # the two runs share one Milvus: leave nothing behind
        for name in store.list_collections(settings.milvus.alias + "_v"):
            store.drop_collection(name)
        worker.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=200_000, help="clicks in the measured round")
    p.add_argument("--base-events", type=int, default=20_000, help="clicks the base model is trained on")
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--train-batches", type=int, default=300)
    p.add_argument("--base-batches", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3, help="runs per mode, alternating; medians are reported")
    p.add_argument("--quick", action="store_true", help="smoke run: 20k clicks, 2k items, 20 batches")
    p.add_argument("--mode", choices=("dense", "sparse"), help=argparse.SUPPRESS)
    p.add_argument("--uri", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.events, args.base_events, args.items, args.train_batches, args.base_batches = 20_000, 4000, 2000, 20, 10
        args.repeats = 1
    if args.mode:  # a child: one run, result to --out
        with tempfile.TemporaryDirectory(prefix=f"vocab-{args.mode}-") as tmp:
            result = run_mode(args.mode, args.uri, Path(tmp), args)
        args.out.write_text(json.dumps(result))
        return

    from workers.infra.milvus_server import EmbeddedMilvus
    from workers.infra.ports import free_port

    summary: dict[str, Any] = {
        "events": args.events,
        "base_events": args.base_events,
        "items": args.items,
        "train_batches": args.train_batches,
        "repeats": args.repeats,
    }
    runs: dict[str, list[dict[str, Any]]] = {"dense": [], "sparse": []}
    with tempfile.TemporaryDirectory(prefix="vocab-bench-") as tmp, EmbeddedMilvus(Path(tmp), port=free_port()) as srv:
        for _ in range(args.repeats):  # alternating, so drifting machine load hits both modes alike
            for mode in ("dense", "sparse"):
                out = Path(tmp) / f"{mode}.json"
                child = [sys.executable, "-m", "bench.vocabulary", "--mode", mode, "--uri", srv.uri, "--out", str(out)]
                child += ["--events", str(args.events), "--base-events", str(args.base_events)]
                child += ["--items", str(args.items), "--train-batches", str(args.train_batches)]
                child += ["--base-batches", str(args.base_batches)]
                subprocess.run(child, check=True)
                runs[mode].append(json.loads(out.read_text()))
    for mode, results in runs.items():
        median = {k: float(np.median([r[k] for r in results])) for k in ("refresh_peak_rss_mb", "round_s")}
        summary[mode] = {**results[0], **median, "runs": results}
        for key in ("distinct_items", "table_rows", "milvus_rows"):
            summary[mode][key] = int(summary[mode][key])
    dense, sparse = summary["dense"], summary["sparse"]
    summary["rss_ratio_sparse_to_dense"] = round(sparse["refresh_peak_rss_mb"] / dense["refresh_peak_rss_mb"], 3)
    summary["round_ratio_sparse_to_dense"] = round(sparse["round_s"] / dense["round_s"], 3)
    emit("vocabulary_quick" if args.quick else "vocabulary", summary)


if __name__ == "__main__":
    main()
