"""Training throughput (samples/s) of one process, per item-table size, reference hyper-parameters.

    python -m bench.train_speed [--steps 300] [--threads 0]

Tables: the ML-100K table (1,350 rows, real data, exact softmax as trained), the AmazonBook demo
slice's own table (20,017 rows through the item vocabulary, 1,280 sampled negatives), and the same
data on a 368k-row table (the size the slice's raw id space needed before the vocabulary). Sparse
updates should not slow down with the table size.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.common import emit, peak_rss_mb
from model.config import MindConfig, TrainConfig
from model.data.types import Sequences
from model.train import Trainer, configure_threads
from workers.settings import DataSettings

BIG_TABLE_ROWS = 367_892  # the AmazonBook demo's raw id space (largest id + 1)


def measure(seqs: Sequences, item_count: int, steps: int, warmup: int = 20) -> dict[str, Any]:
    trainer = Trainer(seqs, MindConfig(), TrainConfig(), item_count=item_count)
    for _ in range(warmup):
        trainer.train_step()
    began = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    took = time.perf_counter() - began
    return {
        "table_rows": trainer.net.item_count,
        "negatives": "exact softmax" if trainer.negatives.full else trainer.negatives.num_negatives,
        "steps_per_s": round(steps / took, 2),
        "samples_per_s": round(steps * 128 / took, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    ml = DataSettings().load("ml-100k")
    ab = DataSettings().load("amazonbook-demo")
    report = {
        "threads": threads,
        "batch_size": 128,
        "ml-100k": measure(ml.train, ml.item_count, args.steps),
        "amazonbook-demo": measure(ab.train, ab.item_count, args.steps),
        "amazonbook-368k": measure(ab.train, BIG_TABLE_ROWS, args.steps),
        "peak_rss_mb": peak_rss_mb(),
    }
    emit("train_speed", report)


if __name__ == "__main__":
    main()
