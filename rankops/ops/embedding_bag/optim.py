"""Configuration of the optimizers fused into the embedding-bag backward.

The step itself lives in the kernels (``batched_embedding_bag_update``); this holds what a step
needs (name, learning rate, eps) and makes the state tensor each optimizer keeps.
"""

from __future__ import annotations

import torch

OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")


class FusedOptimizer:
    """One fused optimizer: ``name`` in OPTIMIZERS, ``lr``, and ``eps`` (Adagrad's
    ``g / (sqrt(s) + eps)``; torch.optim.Adagrad's default 1e-10).

    ``lr`` may be changed between steps (the backward reads it when it runs). It lives in a 0-d
    tensor, ``lr_tensor``, so that a ``torch.compile``d step reads the current value instead of
    the one it was traced with (as FBGEMM's ``learning_rate_tensor``).

    The update is deterministic on every backend: the per-row gradient is reduced over the
    lookups sorted by (row, position), in that order, by one worker per row.
    """

    def __init__(self, name: str = "sgd", lr: float = 0.01, eps: float = 1e-10):
        if name not in OPTIMIZERS:
            raise ValueError(f"rankops: fused optimizer must be one of {OPTIMIZERS}, got {name!r}")
        self.name = name
        self.eps = float(eps)
        self.lr_tensor = torch.zeros((), dtype=torch.float64)
        self.lr = lr
        # What lets autograd reach the fused backward: the weights do not require grad, so the
        # lookup's output would not either. A leaf made here, outside any compiled region, as
        # FBGEMM's placeholder_autograd_tensor; it never receives a gradient.
        self.anchor = torch.zeros((), requires_grad=True)

    @property
    def lr(self) -> float:
        return float(self.lr_tensor)

    @lr.setter
    def lr(self, value: float) -> None:
        if not value >= 0:
            raise ValueError(f"rankops: fused optimizer lr must be >= 0, got {value}")
        self.lr_tensor.fill_(float(value))

    def __repr__(self) -> str:
        return f"FusedOptimizer(name={self.name!r}, lr={self.lr}, eps={self.eps})"

    def __eq__(self, other) -> bool:
        return (isinstance(other, FusedOptimizer)
                and (self.name, self.lr, self.eps) == (other.name, other.lr, other.eps))

    __hash__ = None  # mutable (lr), like the dataclass it replaces

    def init_state(self, weights: torch.Tensor) -> torch.Tensor:
        """fp32 state: empty for sgd, ``[R, D]`` sums of squares for adagrad, ``[R]`` for row-wise."""
        if self.name == "sgd":
            return torch.zeros(0, dtype=torch.float32, device=weights.device)
        if self.name == "adagrad":
            return torch.zeros(weights.shape, dtype=torch.float32, device=weights.device)
        return torch.zeros(weights.shape[0], dtype=torch.float32, device=weights.device)
