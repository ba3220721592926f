"""Data sets: readers for AmazonBook (PaddleRec formats), MovieLens-100K, and a synthetic stream."""

from __future__ import annotations

from pathlib import Path

from model.data.amazonbook import AMAZONBOOK_DEMO_DIR, load_amazonbook_demo, read_eval_lines, read_train_lines
from model.data.errors import DataFormatError, ReadReport
from model.data.movielens import load_ml100k
from model.data.synthetic import SyntheticSpec, iter_events, synthetic_dataset
from model.data.types import Dataset, HeldOut, Sequences

DATASETS = ("ml-100k", "amazonbook-demo", "synthetic")
DEFAULT_SYNTHETIC = SyntheticSpec(num_users=2000, num_items=5000, num_clusters=50)

__all__ = [
    "AMAZONBOOK_DEMO_DIR",
    "DATASETS",
    "DEFAULT_SYNTHETIC",
    "DataFormatError",
    "Dataset",
    "HeldOut",
    "ReadReport",
    "Sequences",
    "SyntheticSpec",
    "iter_events",
    "load_amazonbook_demo",
    "load_dataset",
    "load_ml100k",
    "read_eval_lines",
    "read_train_lines",
    "synthetic_dataset",
]


def load_dataset(name: str, *, split_seed: int, core: int, history_share: float, amazonbook_dir: Path) -> Dataset:
    """Load a data set by name with its split parameters (seed, k-core, history share, AmazonBook folder)."""
    if name == "ml-100k":
        return load_ml100k(seed=split_seed, core=core, history_share=history_share)
    if name == "amazonbook-demo":
        return load_amazonbook_demo(amazonbook_dir, seed=split_seed)
    if name == "synthetic":
        return synthetic_dataset(DEFAULT_SYNTHETIC, history_share=history_share, seed=split_seed)
    raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
