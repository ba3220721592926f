"""Training glue: sampling, sampled-softmax loss, lazy Adam over the sparse item table,
periodic validation, checkpoints (best kept by validation Recall@N), resume."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from model.checkpoint import Checkpoint, prune_versions, save_checkpoint
from model.config import MindConfig, TrainConfig
from model.data.types import HeldOut, IntArray, Sequences
from model.evaluate import EvalReport, evaluate_model
from model.export import UserTower, item_table
from model.loss import logit_bias, routing_penalty, sampled_softmax_loss
from model.negatives import LogUniformSampler
from model.net import MindNet
from model.progress import Progress
from model.sampling import ReferenceSampler
from model.search import ExactSearcher
from model.vocab import ItemVocab


@dataclass
class TrainResult:
    batches: int
    samples_per_s: float
    train_seconds: float
    wall_seconds: float
    final_loss: float
    best: Checkpoint | None
    latest: Checkpoint | None
    evals: list[dict[str, Any]] = field(default_factory=list)


def configure_threads(threads: int) -> int:
    """Paddle sets ``OMP_NUM_THREADS=1`` on import; choose the kernel thread count explicitly."""
    n = threads or (os.cpu_count() or 1)
    paddle.base.core.set_num_threads(n)
    return n


def grow_item_table(net: MindNet, item_count: int, seed: int = 0) -> MindNet:
    """Return a net whose table has ``item_count`` rows; learnt rows are kept, new rows initialised."""
    if item_count <= net.item_count:
        return net
    bigger = MindNet(net.cfg, item_count, seed=seed)
    state = net.state_dict()
    old = state["item_emb.weight"].numpy()
    new = bigger.item_emb.weight.numpy()
    new[: old.shape[0]] = old
    state["item_emb.weight"] = paddle.to_tensor(new)
    bigger.set_state_dict(state)
    return bigger


def select_item_rows(net: MindNet, keep: IntArray, seed: int = 0) -> MindNet:
    """A net whose table is row 0 (padding) then the rows ``keep`` of ``net``'s table, in that order
    (a compaction); rows of ``keep`` beyond ``net``'s table are initialised fresh."""
    keep = np.asarray(keep, dtype=np.int64)
    smaller = MindNet(net.cfg, int(keep.shape[0]) + 1, seed=seed)
    state = net.state_dict()
    old = state["item_emb.weight"].numpy()
    new = smaller.item_emb.weight.numpy()
    new[0] = old[0]
    inside = keep < old.shape[0]
    new[1:][inside] = old[keep[inside]]
    state["item_emb.weight"] = paddle.to_tensor(new)
    smaller.set_state_dict(state)
    return smaller


class Trainer:
    """One model, one optimiser, one seeded stream of examples and negatives."""

    def __init__(
        self,
        seqs: Sequences,
        mind: MindConfig,
        cfg: TrainConfig,
        *,
        item_count: int | None = None,
        init: Checkpoint | None = None,
        vocab: ItemVocab | None = None,
        keep_rows: IntArray | None = None,
    ) -> None:
        """``vocab`` maps the rows of ``seqs`` to item ids (default: ``init``'s, else identity); the
        table gets one row per vocabulary row, and the checkpoints this trainer writes carry it.
        ``keep_rows``: compact ``init``'s table to these rows first (``vocab`` is then the compacted one)."""
        self.cfg = cfg
        self.seqs = seqs
        self.rng = np.random.default_rng(cfg.seed)
        paddle.seed(cfg.seed)
        count = max(item_count or seqs.item_count, seqs.item_count)
        self.parent: str | None = None
        self.step = 0
        if init is not None:
            net = init.load_net()
            if keep_rows is not None:
                net = select_item_rows(net, keep_rows, seed=cfg.seed)
            count = max(count, net.item_count)
            self.parent = init.manifest.version
            self.step = init.manifest.step
            if init.manifest.rng_state:
                self.rng.bit_generator.state = init.manifest.rng_state
        else:
            net = MindNet(mind, count, seed=cfg.seed)
        if vocab is None:
            vocab = init.vocab() if init is not None else ItemVocab.identity(count)
            if len(vocab) < count:  # a dense caller grew the id space: new rows are their own ids
                vocab = vocab.extend(np.arange(len(vocab), count, dtype=np.int64))
        count = max(count, len(vocab))
        if len(vocab) != count:
            raise ValueError(f"vocabulary has {len(vocab)} rows for a table of {count}")
        self.vocab = vocab
        grown = count > net.item_count or keep_rows is not None
        self.net = grow_item_table(net, count, seed=cfg.seed)
        self.net.train()
        self.optimizer = paddle.optimizer.Adam(learning_rate=cfg.lr, parameters=self.net.parameters(), lazy_mode=True)
        opt_state = init.optimizer_state(self.net) if init is not None and not grown else None
        if opt_state:
            self.optimizer.set_state_dict(opt_state)
        self.sampler = ReferenceSampler(seqs, maxlen=mind.maxlen, min_clicks=cfg.min_clicks, rng=self.rng)
        popularity = np.bincount(seqs.items, minlength=self.net.item_count)
        self.negatives = LogUniformSampler(popularity, cfg.negatives, self.rng, full_ratio=cfg.full_softmax_ratio)

    def train_step(self) -> float:
        batch = self.sampler.sample(self.cfg.batch_size)
        neg = self.negatives.sample()
        # One sparse lookup of the distinct ids, then dense gathers: the sparse gradient (and the
        # lazy Adam update) touches each row once instead of once per occurrence.
        all_ids = np.concatenate([batch.hist.ravel(), batch.target, neg.ids])
        uniq, inverse = np.unique(all_ids, return_inverse=True)
        rows = self.net.item_emb(paddle.to_tensor(uniq))
        emb = paddle.gather(rows, paddle.to_tensor(inverse.astype(np.int64)))
        n_tgt = batch.target.shape[0]
        hist_flat, target_emb, neg_emb = paddle.split(emb, [batch.hist.size, n_tgt, neg.ids.shape[0]])
        seq_len = paddle.to_tensor(batch.seq_len)
        reg = self.cfg.routing_reg
        interests, weight = self.net.capsules.route(
            hist_flat.reshape([n_tgt, -1, rows.shape[-1]]), seq_len, routing_grad=reg > 0
        )
        user = self.net.label_aware(interests, target_emb)
        bias = logit_bias(self.negatives.log_expected_for(batch.target), neg.log_expected, batch.target, neg.ids)
        loss = sampled_softmax_loss(
            user, target_emb, neg_emb, paddle.to_tensor(bias), hard_neg_beta=self.cfg.hard_neg_beta
        )
        if reg > 0:
            loss = loss + reg * routing_penalty(weight, seq_len)
        loss.backward()
        self.optimizer.step()
        self.optimizer.clear_grad()
        self.step += 1
        return float(loss.numpy())

    def validate(self, valid: HeldOut, top_n: int) -> EvalReport:
        tower = UserTower(self.net, model_version="candidate")
        return evaluate_model(tower, ExactSearcher(item_table(self.net)), valid, top_n=top_n)

    def checkpoint(self, root: Path, metrics: dict[str, Any], *, best: bool) -> Checkpoint:
        ckpt = save_checkpoint(
            root,
            self.net,
            self.optimizer,
            parent=self.parent,
            step=self.step,
            data_fingerprint=self.seqs.fingerprint(),
            train=self.cfg.model_dump(),
            metrics=metrics,
            rng_state=dict(self.rng.bit_generator.state),
            best=best,
            vocab=self.vocab,
        )
        self.parent = ckpt.manifest.version
        return ckpt


def train(
    trainer: Trainer,
    *,
    batches: int,
    checkpoint_dir: Path | None,
    valid: HeldOut | None = None,
    top_n: int = 50,
    progress: Progress | None = None,
) -> TrainResult:
    """Run ``batches`` steps; validate and checkpoint every ``eval_every`` and at the end.

    With ``cfg.patience`` and a validation set, stop early after that many evaluations in a row
    without a better validation Recall@N (the best checkpoint is kept).
    """
    cfg = trainer.cfg
    wall0 = time.perf_counter()
    train_s = 0.0
    loss_ema = float("nan")
    best_recall = -1.0
    best: Checkpoint | None = None
    latest: Checkpoint | None = None
    evals: list[dict[str, Any]] = []
    stale = 0
    best_seen = -1.0
    done = 0
    for done in range(1, batches + 1):
        t0 = time.perf_counter()
        loss = trainer.train_step()
        train_s += time.perf_counter() - t0
        loss_ema = loss if np.isnan(loss_ema) else 0.98 * loss_ema + 0.02 * loss
        if progress is not None:
            progress.update(done, loss_ema, done * cfg.batch_size / max(train_s, 1e-9))
        if done % cfg.eval_every and done != batches:
            continue
        metrics: dict[str, Any] = {"loss": round(loss_ema, 6), "step": trainer.step}
        recall = 0.0
        if valid is not None and valid.num_users:
            report = trainer.validate(valid, top_n)
            metrics["valid"] = report.as_dict()
            recall = report.metrics.recall
            if progress is not None:
                progress.message(f"step {trainer.step}: valid recall@{top_n} {recall:.4f}")
        evals.append(metrics)
        if checkpoint_dir is not None:
            is_best = recall > best_recall
            latest = trainer.checkpoint(checkpoint_dir, metrics, best=is_best)
            if is_best:
                best_recall, best = recall, latest
            if cfg.keep_checkpoints is not None:  # LATEST and BEST always stay
                prune_versions(checkpoint_dir, cfg.keep_checkpoints)
        if "valid" in metrics:
            stale, best_seen = (0, recall) if recall > best_seen else (stale + 1, best_seen)
            if cfg.patience and stale >= cfg.patience:
                break
    return TrainResult(
        batches=done,
        samples_per_s=done * cfg.batch_size / max(train_s, 1e-9),
        train_seconds=train_s,
        wall_seconds=time.perf_counter() - wall0,
        final_loss=loss_ema,
        best=best,
        latest=latest,
        evals=evals,
    )
