"""Data sets: readers for AmazonBook (PaddleRec formats), MovieLens-100K, and a synthetic stream."""

from __future__ import annotations

from typing import TYPE_CHECKING

from model.data.amazonbook import load_amazonbook_demo, read_eval_lines, read_train_lines
from model.data.errors import DataFormatError, ReadReport
from model.data.movielens import load_ml100k
from model.data.synthetic import SyntheticSpec, iter_events, synthetic_dataset
from model.data.types import Dataset, HeldOut, Sequences

if TYPE_CHECKING:
    from workers.settings import DataSettings

DATASETS = ("ml-100k", "amazonbook-demo", "synthetic")
DEFAULT_SYNTHETIC = SyntheticSpec(num_users=2000, num_items=5000, num_clusters=50)

__all__ = [
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


def load_dataset(name: str, settings: DataSettings) -> Dataset:
    """Load a data set by name with the split settings (seed, k-core, history share)."""
    if name == "ml-100k":
        return load_ml100k(seed=settings.split_seed, core=settings.core, history_share=settings.history_share)
    if name == "amazonbook-demo":
        return load_amazonbook_demo(settings.amazonbook_dir, seed=settings.split_seed)
    if name == "synthetic":
        return synthetic_dataset(DEFAULT_SYNTHETIC, history_share=settings.history_share, seed=settings.split_seed)
    raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
