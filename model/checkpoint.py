"""Checkpoints with a manifest: ``<dir>/<version>/{net.pdparams, opt.pdopt, items.npz, manifest.json}``.

``items.npz`` is the version's item vocabulary (external item id <-> table row, see
:mod:`model.vocab`), written in the same temporary directory as the weights, so a version's table
and vocabulary are saved, renamed into place and loaded together. Checkpoints written before the
vocabulary existed have none: their ids were rows, so they load with the identity vocabulary.

Versions are ``v1, v2, ...`` (monotonic within a checkpoint directory). ``LATEST`` and ``BEST``
files name the newest and the best-by-validation version. Every write goes to a temporary
directory first and is renamed into place, so a crash never leaves a half-written checkpoint.
:func:`prune_versions` deletes old versions (training keeps ``train.keep_checkpoints``, the refresh
worker ``refresh.keep_versions`` plus whatever Milvus still serves), never the two pointers' targets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from model.config import MindConfig
from model.net import MindNet
from model.vocab import ItemVocab

VOCAB_FILE = "items.npz"

_VERSION = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class Manifest:
    version: str
    parent: str | None
    step: int
    created_at: float
    item_count: int
    data_fingerprint: str
    mind: dict[str, Any]
    train: dict[str, Any]
    metrics: dict[str, Any]
    rng_state: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Manifest:
        return Manifest(**json.loads(text))


@dataclass
class Checkpoint:
    path: Path
    manifest: Manifest

    def load_net(self) -> MindNet:
        net = MindNet(MindConfig(**self.manifest.mind), self.manifest.item_count)
        net.set_state_dict(paddle.load(str(self.path / "net.pdparams")))
        net.eval()
        return net

    def vocab(self) -> ItemVocab:
        """The version's item vocabulary (identity for checkpoints older than the vocabulary).

        An item with no recorded click time (``last_seen`` 0: it came from offline training data)
        counts as seen when this version was created."""
        path = self.path / VOCAB_FILE
        if not path.exists():
            return ItemVocab.identity(self.manifest.item_count, seen_at=self.manifest.created_at)
        vocab = ItemVocab.load(path)
        if len(vocab) != self.manifest.item_count:
            raise ValueError(f"{path}: {len(vocab)} rows for a table of {self.manifest.item_count}")
        unseen = vocab.last_seen == 0
        unseen[0] = False
        if unseen.any():
            vocab = ItemVocab(vocab.ids, np.where(unseen, self.manifest.created_at, vocab.last_seen))
        return vocab

    def optimizer_state(self, net: MindNet) -> dict[str, Any] | None:
        """The saved optimiser state, keyed for ``net``'s parameters (see :func:`_rekey`)."""
        opt = self.path / "opt.pdopt"
        if not opt.exists():
            return None
        by_structure = {p.name: name for name, p in net.named_parameters()}
        return _rekey(paddle.load(str(opt)), {v: k for k, v in by_structure.items()})


def _rekey(state: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """Rename optimiser accumulators from one parameter naming to another.

    Paddle keys accumulators by the parameter's global unique name (``embedding_3.w_0_moment1_0``),
    which differs between two model instances; checkpoints store them under the structured name
    (``item_emb.weight_moment1_0``) so a fresh instance can load them.
    """
    out: dict[str, Any] = {}
    for key, value in state.items():
        new = key
        for old_name, new_name in names.items():
            if key.startswith(old_name + "_"):
                new = new_name + key[len(old_name) :]
                break
        out[new] = value
    return out


def version_number(version: str) -> int:
    match = _VERSION.match(version)
    if not match:
        raise ValueError(f"not a model version: {version!r} (expected v<N>)")
    return int(match.group(1))


def list_versions(root: Path) -> list[str]:
    if not root.exists():
        return []
    found = [p.name for p in root.iterdir() if p.is_dir() and _VERSION.match(p.name)]
    return sorted(found, key=version_number)


def next_version(root: Path) -> str:
    versions = list_versions(root)
    return f"v{version_number(versions[-1]) + 1 if versions else 1}"


def _write_pointer(root: Path, name: str, version: str) -> None:
    tmp = root / f".{name}.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / name)


def save_checkpoint(
    root: Path,
    net: MindNet,
    optimizer: paddle.optimizer.Optimizer | None,
    *,
    parent: str | None,
    step: int,
    data_fingerprint: str,
    train: dict[str, Any],
    metrics: dict[str, Any],
    rng_state: dict[str, Any] | None = None,
    best: bool = False,
    vocab: ItemVocab | None = None,
) -> Checkpoint:
    """Write the next version under ``root``; ``vocab`` (default: identity) must have one row per table row."""
    if vocab is not None and len(vocab) != net.item_count:
        raise ValueError(f"vocabulary has {len(vocab)} rows, the item table {net.item_count}")
    root.mkdir(parents=True, exist_ok=True)
    version = next_version(root)
    manifest = Manifest(
        version=version,
        parent=parent,
        step=step,
        created_at=time.time(),
        item_count=net.item_count,
        data_fingerprint=data_fingerprint,
        mind=net.cfg.model_dump(),
        train=train,
        metrics=metrics,
        rng_state=rng_state,
    )
    tmp = root / f".{version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    paddle.save(net.state_dict(), str(tmp / "net.pdparams"))
    if optimizer is not None:
        structured = {p.name: name for name, p in net.named_parameters()}
        paddle.save(_rekey(optimizer.state_dict(), structured), str(tmp / "opt.pdopt"))
    (vocab if vocab is not None else ItemVocab.identity(net.item_count, seen_at=manifest.created_at)).save(
        tmp / VOCAB_FILE
    )
    (tmp / "manifest.json").write_text(manifest.to_json())
    os.replace(tmp, root / version)
    _write_pointer(root, "LATEST", version)
    if best:
        _write_pointer(root, "BEST", version)
    return Checkpoint(root / version, manifest)


def pointed_versions(root: Path) -> set[str]:
    """The versions the ``LATEST`` and ``BEST`` pointers name (those that exist)."""
    named = set()
    for name in ("LATEST", "BEST"):
        pointer = root / name
        if pointer.exists():
            named.add(pointer.read_text().strip())
    return named


def prune_versions(root: Path, keep: int, protect: Iterable[str] = ()) -> list[str]:
    """Delete the version directories of ``root`` older than its newest ``keep``, except ``protect``
    and what ``LATEST`` and ``BEST`` name; returns the deleted versions, oldest first.

    Version numbers never repeat (the newest always stays, and ``next_version`` counts from it). A
    directory is renamed out of the ``v<N>`` namespace before it is removed, so a crash never leaves a
    half-deleted version that still looks like one; leftovers of such crashes are removed here."""
    if keep < 1:
        raise ValueError("keep at least one version")
    versions = list_versions(root)
    spared = set(versions[-keep:]) | set(protect) | pointed_versions(root)
    deleted = []
    for version in versions:
        if version in spared:
            continue
        doomed = root / f".{version}.deleting"
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(root / version, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        deleted.append(version)
    for leftover in root.glob(".v*.deleting") if root.exists() else ():
        shutil.rmtree(leftover, ignore_errors=True)
    return deleted


def open_checkpoint(root: Path, which: str = "best") -> Checkpoint:
    """``which``: ``"best"``, ``"latest"`` or a version ``v<N>``."""
    if which in ("best", "latest"):
        pointer = root / which.upper()
        if not pointer.exists():
            raise FileNotFoundError(f"no {which} checkpoint under {root}: train first (mindstream train)")
        which = pointer.read_text().strip()
    path = root / which
    manifest_file = path / "manifest.json"
    if not manifest_file.exists():
        raise FileNotFoundError(f"no checkpoint {which} under {root}")
    return Checkpoint(path, Manifest.from_json(manifest_file.read_text()))
