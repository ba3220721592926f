"""Vectors for items a trained version does not know, under that version's weights (cold start).

Two rules, both pure functions of a frozen version (its item table and user tower) and of the clicks
that introduced the new items:

* :func:`co_click_mean`: the mean of the table rows of what the item's clickers clicked (their
  known history items). No training step, no tower.
* :func:`few_steps`: a few full-batch Adam steps of the training loss (sampled softmax as in
  :mod:`model.loss` / :mod:`model.train`, log-Q correction, accidental hits masked, the readout of the
  version's :class:`~model.config.MindConfig`) on the new rows alone. The user tower and every
  existing row are frozen: the clickers' interests are computed once with the numpy tower
  (:class:`~model.serving.ServingTower`, eval mode, as served) and only the new rows get gradients.

Everything here is numpy: no Paddle autograd or global Paddle state is touched, so the refresh
worker's fast-path thread can run it while its main thread trains. ``bench.cold_start`` measures
which rule the recall metrics prefer (docs/freshness.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from model.config import ColdStartSteps, Readout
from model.data.types import IntArray
from model.net import MindNet
from model.serving import ServingTower

__all__ = [
    "ColdStartVectors",
    "FrozenModel",
    "IntroducingClicks",
    "StepsResult",
    "co_click_mean",
    "few_steps",
    "introducing_loss",
    "random_rows",
]

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
_MASKED = np.float32(-1e9)  # as model.loss
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8  # paddle.optimizer.Adam's defaults


@dataclass(frozen=True)
class ColdStartVectors:
    """One vector per new item; ``ready[i]`` False = no context yet (the item waits; its row is 0)."""

    vectors: FloatArray  # [n, dim]
    ready: BoolArray  # [n]

    @property
    def waiting(self) -> int:
        return int((~self.ready).sum())


@dataclass(frozen=True)
class FrozenModel:
    """What the cold-start rules read of a version: its numpy user tower (item table included) and
    its training readout. Nothing here is ever written."""

    tower: ServingTower
    readout: Readout
    pow_p: float

    @classmethod
    def from_net(cls, net: MindNet, model_version: str = "live") -> FrozenModel:
        return cls(ServingTower.from_net(net, model_version), net.cfg.readout, net.cfg.pow_p)

    @property
    def table(self) -> FloatArray:
        """The item table (row = item row, row 0 = padding)."""
        return self.tower.table


@dataclass(frozen=True)
class IntroducingClicks:
    """The clicks that introduced the new items: ``histories[b]`` (rows of the version's known items,
    oldest first: what the user had clicked before) -> new item ``targets[b]`` (an index 0..n-1
    into the new items)."""

    histories: list[IntArray]
    targets: IntArray

    def __post_init__(self) -> None:
        if len(self.histories) != len(self.targets):
            raise ValueError("one target per history")


@dataclass(frozen=True)
class StepsResult:
    """``vectors``/``ready`` as :class:`ColdStartVectors`; ``losses[s]`` = the loss on the introducing
    clicks before step ``s`` (``losses[-1]``: after the last step)."""

    vectors: FloatArray
    ready: BoolArray
    losses: list[float] = field(default_factory=list)

    @property
    def waiting(self) -> int:
        return int((~self.ready).sum())


def co_click_mean(table: FloatArray, contexts: Sequence[IntArray]) -> ColdStartVectors:
    """For each new item, the mean of ``table[contexts[i]]`` (repeats count; rows outside
    ``1..len(table) - 1`` are unknown and ignored). An item with no known context row waits."""
    table = np.asarray(table, dtype=np.float32)
    dim = table.shape[1]
    vectors = np.zeros((len(contexts), dim), dtype=np.float32)
    ready = np.zeros(len(contexts), dtype=bool)
    for i, context in enumerate(contexts):
        rows = np.asarray(context, dtype=np.int64)
        rows = rows[(rows > 0) & (rows < table.shape[0])]
        if rows.size:
            vectors[i] = table[rows].mean(axis=0)
            ready[i] = True
    return ColdStartVectors(vectors, ready)


@dataclass(frozen=True)
class _Problem:
    """The frozen part of the loss: the clickers' interests and the existing rows."""

    interests: FloatArray  # [B, K, D], constant
    targets: IntArray  # [B], index into the optimised rows
    table: FloatArray  # [M + 1, D], constant (row 0 padding, never a negative)
    readout: Readout
    pow_p: float
    bg_user: FloatArray | None = None  # [C, D] user vectors of the background clicks (constant)
    bg_targets: IntArray | None = None  # [C] their (existing) target rows
    bg_weight: float = 0.0  # the background's share of the loss


def _interests(model: FrozenModel, histories: Sequence[IntArray]) -> tuple[FloatArray, IntArray]:
    """Interests ``[B', K, D]`` of the histories holding a known item, and which those are."""
    tower = model.tower
    known = [np.asarray(h, dtype=np.int64) for h in histories]
    known = [h[(h > 0) & (h < tower.item_count)] for h in known]
    kept = np.flatnonzero(np.asarray([h.size > 0 for h in known], dtype=bool))
    if not kept.size:
        return np.zeros((0, tower.k_max, tower.dim), dtype=np.float32), kept
    return np.asarray(tower.interests([known[i] for i in kept]), dtype=np.float32), kept


def _readout(
    readout: Readout, pow_p: float, interests: FloatArray, target: FloatArray
) -> tuple[FloatArray, FloatArray | None]:
    """The training readout (:meth:`~model.net.MindNet.label_aware`): user vectors ``[B, D]`` and,
    for 'soft', the attention ``[B, K]`` (for 'hard' no gradient passes the argmax, as in Paddle)."""
    att = np.einsum("bkd,bd->bk", interests, target)
    att = np.where(np.any(interests != 0, axis=-1), att, -np.inf)  # interests switched off (dynamic K): never read
    if readout == "hard":
        return interests[np.arange(interests.shape[0]), np.argmax(att, axis=1)], None
    shaped = np.sign(att) * np.abs(att) ** pow_p if pow_p != 1.0 else att
    alpha = np.exp(shaped - shaped.max(axis=1, keepdims=True))
    alpha /= alpha.sum(axis=1, keepdims=True)
    return np.einsum("bk,bkd->bd", alpha, interests), alpha


def _setup(
    model: FrozenModel,
    clicks: IntroducingClicks,
    n_new: int,
    background: IntroducingClicks | None = None,
    background_weight: float = 0.0,
) -> tuple[_Problem, BoolArray, IntArray]:
    """Interests of the clicks with a known history; ``ready`` per new item; the clicks kept; the
    background clicks' user vectors (their targets are existing rows, so these are constants)."""
    targets = np.asarray(clicks.targets, dtype=np.int64)
    if targets.size and (targets.min() < 0 or targets.max() >= n_new):
        raise ValueError("targets index the new items: 0 <= target < n")
    interests, kept = _interests(model, clicks.histories)
    ready = np.zeros(n_new, dtype=bool)
    ready[targets[kept]] = True
    bg_user = bg_targets = None
    if background is not None and background_weight > 0:
        bg_all = np.asarray(background.targets, dtype=np.int64)
        if bg_all.size and (bg_all.min() < 1 or bg_all.max() >= model.tower.item_count):
            raise ValueError("background targets are existing rows: 1 <= target < table rows")
        bg_interests, bg_kept = _interests(model, background.histories)
        bg_targets = bg_all[bg_kept]
        bg_user = _readout(model.readout, model.pow_p, bg_interests, model.table[bg_targets])[0]
        if not bg_targets.size:
            bg_user = bg_targets = None
    weight = background_weight if bg_user is not None else 0.0
    problem = _Problem(
        interests, targets[kept], model.table, model.readout, model.pow_p, bg_user, bg_targets, float(weight)
    )
    return problem, ready, kept


def _negative_columns(problem: _Problem, cfg: ColdStartSteps, rng: np.random.Generator) -> tuple[IntArray, np.float32]:
    """Existing rows used as negatives this step and their logit correction (``-log`` expected count)."""
    existing = problem.table.shape[0] - 1
    if existing <= 0:
        return np.zeros(0, dtype=np.int64), np.float32(0.0)
    if existing <= cfg.negatives * cfg.full_softmax_ratio or cfg.negatives >= existing:
        return np.arange(1, existing + 1, dtype=np.int64), np.float32(0.0)  # the exact softmax
    # Uniform with replacement: every existing item expects negatives / existing draws (log-Q).
    return rng.integers(1, existing + 1, size=cfg.negatives), np.float32(np.log(existing / cfg.negatives))


def _cross_entropy(logits: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per-row ``-log softmax(logits)[:, 0]`` and the softmax."""
    top = logits.max(axis=1, keepdims=True)
    exp = np.exp(logits - top)
    total = exp.sum(axis=1, keepdims=True)
    return np.log(total[:, 0]) + top[:, 0] - logits[:, 0], exp / total


def _loss_and_grad(
    problem: _Problem, rows: FloatArray, neg_ids: IntArray, correction: np.float32, *, grad: bool = True
) -> tuple[float, FloatArray]:
    """The loss and its gradient with respect to the new ``rows`` only: ``1 - bg_weight`` times the
    mean sampled-softmax cross-entropy of the introducing clicks against ``[target, existing
    negatives, every new row]`` plus ``bg_weight`` times that of the background clicks (their
    targets are existing rows; the new rows are only negatives there)."""
    inter, tgt = problem.interests, problem.targets
    neg = problem.table[neg_ids]
    batch = tgt.shape[0]
    g_rows = np.zeros_like(rows)
    loss = 0.0
    w_intro = 1.0 - problem.bg_weight
    if batch:
        w_t = rows[tgt]  # [B, D]
        user, alpha = _readout(problem.readout, problem.pow_p, inter, w_t)
        pos = np.sum(user * w_t, axis=1, keepdims=True)  # [B, 1]
        old = user @ neg.T + correction  # [B, N]
        new = user @ rows.T  # [B, n]
        new[np.arange(batch), tgt] = _MASKED  # the row's own target is an accidental hit
        per_click, prob = _cross_entropy(np.concatenate([pos, old, new], axis=1))
        loss += w_intro * float(per_click.mean())
        if grad:
            scale = w_intro / batch  # d loss / d logits = scale * (prob - onehot(0))
            d_pos = (prob[:, 0] - 1.0) * scale
            d_old = prob[:, 1 : 1 + neg.shape[0]] * scale
            d_new = prob[:, 1 + neg.shape[0] :] * scale
            g_rows += d_new.T @ user  # the new rows as negatives
            g_target = d_pos[:, None] * user  # the positive logit, through the target row
            if alpha is not None and inter.shape[1] > 1:
                g_user = d_pos[:, None] * w_t + d_old @ neg + d_new @ rows  # [B, D]
                d_alpha = np.einsum("bkd,bd->bk", inter, g_user)
                d_shaped = alpha * (d_alpha - np.sum(alpha * d_alpha, axis=1, keepdims=True))
                if problem.pow_p != 1.0:
                    att = np.einsum("bkd,bd->bk", inter, w_t)
                    d_shaped = d_shaped * problem.pow_p * np.abs(att) ** (problem.pow_p - 1.0)
                g_target = g_target + np.einsum("bk,bkd->bd", d_shaped, inter)
            np.add.at(g_rows, tgt, g_target)
    if problem.bg_user is not None and problem.bg_targets is not None and problem.bg_weight > 0:
        user, bg_tgt = problem.bg_user, problem.bg_targets
        pos = np.sum(user * problem.table[bg_tgt], axis=1, keepdims=True)
        old = user @ neg.T + correction
        old[bg_tgt[:, None] == neg_ids[None, :]] = _MASKED  # accidental hits, as model.loss.logit_bias
        new = user @ rows.T
        per_click, prob = _cross_entropy(np.concatenate([pos, old, new], axis=1))
        loss += problem.bg_weight * float(per_click.mean())
        if grad:
            g_rows += (prob[:, 1 + neg.shape[0] :] * (problem.bg_weight / bg_tgt.shape[0])).T @ user
    return loss, np.asarray(g_rows, dtype=np.float32)


def introducing_loss(
    model: FrozenModel,
    clicks: IntroducingClicks,
    rows: FloatArray,
    cfg: ColdStartSteps,
    *,
    background: IntroducingClicks | None = None,
    background_weight: float = 0.0,
) -> float:
    """The loss :func:`few_steps` minimises, for given new ``rows``, with every existing row as a
    negative (the exact softmax, whatever ``cfg.negatives``)."""
    rows = np.asarray(rows, dtype=np.float32)
    problem, ready, _ = _setup(model, clicks, rows.shape[0], background, background_weight)
    exact = cfg.model_copy(update={"full_softmax_ratio": float("inf")})
    neg_ids, correction = _negative_columns(problem, exact, np.random.default_rng(0))
    return _loss_and_grad(_restrict(problem, ready), rows[ready], neg_ids, correction, grad=False)[0]


def _restrict(problem: _Problem, ready: BoolArray) -> _Problem:
    """The problem over the ready rows only (targets renumbered)."""
    index = np.cumsum(ready) - 1
    return replace(problem, targets=index[problem.targets])


def random_rows(n: int, dim: int, seed: int) -> FloatArray:
    """``N(0, 1/dim)`` rows: the item table's own initialisation (:class:`~model.net.MindNet`)."""
    return np.random.default_rng(seed).normal(0.0, 1.0 / dim**0.5, size=(n, dim)).astype(np.float32)


def few_steps(
    model: FrozenModel,
    clicks: IntroducingClicks,
    n_new: int,
    cfg: ColdStartSteps,
    *,
    init: FloatArray | None = None,
    background: IntroducingClicks | None = None,
    background_weight: float | None = None,
    seed: int = 0,
) -> StepsResult:
    """Vectors for ``n_new`` new items: ``cfg.steps`` full-batch Adam steps of the sampled-softmax
    training loss, updating the new rows alone.

    The loss: the introducing ``clicks`` (their targets are the new items) and, with weight
    ``background_weight`` (default ``cfg.background_weight``), ``background`` clicks on existing
    items (``targets`` = existing rows), in which the new rows are negatives, as every item is in a
    full retraining: without them nothing keeps a new row from outscoring the catalogue for users who
    never clicked it. ``init [n_new, dim]``: the starting rows (e.g. :func:`co_click_mean`'s); without
    it, the co-click mean of the clicks' histories when ``cfg.init == "co_click"``, else
    :func:`random_rows`. Negatives per step: every existing row when few enough
    (``cfg.full_softmax_ratio``), else ``cfg.negatives`` drawn uniformly with the log-Q correction;
    the other new rows always; accidental hits masked. Clicks with no known history item give no
    interest and are ignored; an item without such a click is not ready (it waits, its row stays
    ``init``'s). Deterministic for ``seed``; ``model`` is never written.
    """
    dim = model.tower.dim
    if init is None:
        if cfg.init == "co_click":
            contexts: list[list[IntArray]] = [[] for _ in range(n_new)]
            for history, target in zip(clicks.histories, np.asarray(clicks.targets).tolist(), strict=True):
                contexts[target].append(np.asarray(history, dtype=np.int64))
            joined = [np.concatenate(c) if c else np.zeros(0, dtype=np.int64) for c in contexts]
            init = co_click_mean(model.table, joined).vectors
        else:
            init = random_rows(n_new, dim, seed)
    rows = np.array(init, dtype=np.float32, copy=True)
    if rows.shape != (n_new, dim):
        raise ValueError(f"init has shape {rows.shape}, expected {(n_new, dim)}")
    weight = cfg.background_weight if background_weight is None else background_weight
    if not 0 <= weight < 1:
        raise ValueError("background_weight is a share of the loss in [0, 1)")
    problem, ready, _ = _setup(model, clicks, n_new, background, weight)
    sub = _restrict(problem, ready)
    rng = np.random.default_rng(seed)
    w = rows[ready]
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    losses: list[float] = []
    for step in range(1, cfg.steps + 1):
        neg_ids, correction = _negative_columns(sub, cfg, rng)
        loss, g = _loss_and_grad(sub, w, neg_ids, correction)
        losses.append(loss)
        m = _BETA1 * m + (1 - _BETA1) * g
        v = _BETA2 * v + (1 - _BETA2) * g * g
        m_hat = m / (1 - _BETA1**step)
        v_hat = v / (1 - _BETA2**step)
        w = (w - cfg.lr * m_hat / (np.sqrt(v_hat) + _EPS)).astype(np.float32)
    neg_ids, correction = _negative_columns(sub, cfg, rng)
    losses.append(_loss_and_grad(sub, w, neg_ids, correction, grad=False)[0])
    rows[ready] = w
    return StepsResult(rows, ready, losses)
