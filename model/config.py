"""Hyper-parameters of the MIND model and of its training loop, declared once.

Reference defaults follow PaddleRec's ``models/recall/mind/config.yaml``.
"""

from __future__ import annotations

from typing import Literal

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
        description="Number of interest capsules per user. 1 recalls best on ML-100K (bench/results/ablation.json: "
        "Recall@50 0.302 vs 0.261 for the best K=4 and 0.252 for PaddleRec's K=4); 4 is PaddleRec's",
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
    seed: int = 2026
    threads: int = Field(0, ge=0, description="CPU threads for Paddle kernels; 0 = all cores")
