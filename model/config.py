"""Hyper-parameters of the MIND model and of its training loop, declared once.

Reference defaults follow PaddleRec's ``models/recall/mind/config.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

Routing = Literal["reference", "comirec", "comirec_dr"]
Readout = Literal["soft", "hard"]


class MindConfig(BaseModel):
    """Shape and behaviour of the MIND network."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dim: int = Field(64, ge=2, description="Embedding and interest vector size")
    k_max: int = Field(
        1,
        ge=1,
        le=32,
        description="Number of interest capsules per user; 4 is PaddleRec's. Unset: the data set's "
        "RECOMMENDED_K_MAX where it has one (docs/multi-interest.md: The table)",
    )
    maxlen: int = Field(20, ge=1, le=512, description="History length fed to the user tower")
    iters: int = Field(3, ge=1, le=10, description="Dynamic routing rounds")
    pow_p: float = Field(1.0, gt=0, description="Label-aware attention sharpness")
    routing: Routing = Field(
        "reference",
        description="Initial routing logits: 'reference' = PaddleRec's fixed random [1, K, maxlen] shared by all "
        "users; 'comirec' = fresh N(0, 1) logits per sample in training (ComiRec's MIND); 'comirec_dr' = "
        "that plus one bilinear map per interest (ComiRec-DR). Inference always starts from the fixed logits.",
    )
    readout: Readout = Field(
        "hard",
        description="Training readout: 'soft' = label-aware attention (pow_p); 'hard' = the interest "
        "closest to the target (ComiRec)",
    )
    dynamic_k: bool = Field(
        False,
        description="MIND's dynamic interest count: a user whose history (as the tower sees it, at most maxlen "
        "known clicks) has n clicks gets K_u = max(1, min(k_max, floor(log2 n))) interests, in training and "
        "serving; the others are zero and retrieve nothing",
    )


# The interest count the multi-interest table recommends per data set (bench/results/multi_interest*.json,
# 5 seeds): ML-100K recalls best with one interest on both protocols (K=4: -14% Recall@50 standard,
# -10% mixed); on the AmazonBook slice K=4 recalls the same (paired difference -0.0003 +- 0.003) with
# lists 0.10 more diverse (intra-list, by item vectors) on every seed. Data sets not named here: the
# field's default.
RECOMMENDED_K_MAX: Final[Mapping[str, int]] = {"ml-100k": 1, "amazonbook-demo": 4}


def recommended_k_max(dataset: str) -> int:
    """``k_max`` for ``dataset`` when the operator did not choose one."""
    default: int = MindConfig.model_fields["k_max"].default
    return RECOMMENDED_K_MAX.get(dataset, default)


class TrainConfig(BaseModel):
    """Training-loop settings: sampling, loss and optimiser."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_size: int = Field(128, ge=1)
    negatives: int = Field(1280, ge=1, description="Shared sampled negatives per batch (capped below the item count)")
    full_softmax_ratio: float = Field(
        1.5,
        ge=0,
        description="Exact softmax over all items when item count <= negatives x this (it then costs at most "
        "this much more than sampling, and beats it); 0 = always sample",
    )
    lr: float = Field(0.005, gt=0)
    batches: int = Field(3000, ge=1, description="Total sampled batches (PaddleRec: an epoch is 1000 batches)")
    eval_every: int = Field(500, ge=1, description="Validate (Recall@N) and checkpoint every this many batches")
    min_clicks: int = Field(5, ge=2, description="Users with fewer clicks are never sampled (reference: > 4)")
    routing_reg: float = Field(
        0.0, ge=0, description="REMI routing regularisation: weight of the squared per-interest routing variance"
    )
    hard_neg_beta: float = Field(
        0.0, ge=0, description="REMI interest-aware hard negatives: negatives reweighted by exp(beta * score); 0 = off"
    )
    patience: int = Field(0, ge=0, description="Stop after this many evaluations without a better validation; 0 = off")
    keep_checkpoints: int | None = Field(
        3,
        ge=1,
        description="Newest checkpoints kept per checkpoint directory (LATEST and BEST always stay); unset = all",
    )
    seed: int = 2026
    threads: int = Field(0, ge=0, description="CPU threads for Paddle kernels; 0 = all cores")


ColdStartRule = Literal["co_click", "steps"]


class ColdStartSteps(BaseModel):
    """The ``steps`` cold-start rule (:func:`model.cold_start.few_steps`): a few Adam steps of the training
    loss on the new item rows alone, every other weight frozen, on the clicks that introduced them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(
        10,
        ge=1,
        description="Full-batch Adam steps over the introducing clicks (bench/results/cold_start.json)",
    )
    lr: float = Field(0.05, gt=0, description="Adam learning rate of the new rows")
    negatives: int = Field(
        1280, ge=1, description="Existing rows sampled as negatives per step (the new rows always are)"
    )
    full_softmax_ratio: float = Field(
        1.5, ge=0, description="Every existing row is a negative when their count <= negatives x this (TrainConfig's)"
    )
    background_weight: float = Field(
        0.9,
        ge=0,
        lt=1,
        description="Share of the loss from background clicks on known items (the new rows are their negatives); "
        "a caller that knows the share of clicks on known items passes that instead",
    )
    background: int = Field(512, ge=0, description="Recent clicks on known items the fast path keeps as background")
    init: Literal["co_click", "random"] = Field(
        "co_click", description="Start from the co-click mean, or from the table's N(0, 1/dim) initialisation"
    )
