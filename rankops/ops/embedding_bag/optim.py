"""Configuration of the optimizers fused into the embedding-bag backward.

The step itself lives in the kernels (``batched_embedding_bag_update``); this holds what a step
needs (name, learning rate, eps) and makes the state tensor each optimizer keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")


@dataclass
class FusedOptimizer:
    """One fused optimizer: ``name`` in OPTIMIZERS, ``lr``, and ``eps`` (Adagrad's
    ``g / (sqrt(s) + eps)``; torch.optim.Adagrad's default 1e-10).

    ``lr`` may be changed between steps (the backward reads it when it runs).

    The update is deterministic on every backend: the per-row gradient is reduced over the
    lookups sorted by (row, position), in that order, by one worker per row.
    """

    name: str = "sgd"
    lr: float = 0.01
    eps: float = 1e-10

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"rankops: fused optimizer must be one of {OPTIMIZERS}, got {self.name!r}")
        if not self.lr >= 0:
            raise ValueError(f"rankops: fused optimizer lr must be >= 0, got {self.lr}")

    def init_state(self, weights: torch.Tensor) -> torch.Tensor:
        """fp32 state: empty for sgd, ``[R, D]`` sums of squares for adagrad, ``[R]`` for row-wise."""
        if self.name == "sgd":
            return torch.zeros(0, dtype=torch.float32, device=weights.device)
        if self.name == "adagrad":
            return torch.zeros(weights.shape, dtype=torch.float32, device=weights.device)
        return torch.zeros(weights.shape[0], dtype=torch.float32, device=weights.device)
