"""What every model in the zoo shares: its schema, the per-task loss and the predictions.

The trainer calls only ``model(batch) -> logits [B, T]``, ``model.loss(logits, labels)`` and
``model.predict(logits)``, so it knows nothing of any one model; ESMM overrides the last two.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rankops.data.schema import Schema
from rankops.train.losses import multitask_loss


class RankingModel(nn.Module):
    """Base of the zoo's models: ``forward(batch) -> [B, T]`` logits, one per task of ``schema``."""

    def __init__(self, schema: Schema, name: str):
        super().__init__()
        self.schema, self.name = schema, name

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Task-weighted sum of each task's mean loss (sigmoid cross-entropy or squared error)."""
        return multitask_loss(logits, labels, self.schema.tasks)

    def predict(self, logits: Tensor) -> Tensor:
        """Probabilities for binary tasks, the raw value for regression ones: ``[B, T]``."""
        binary = torch.tensor([t.kind == "binary" for t in self.schema.tasks], device=logits.device)
        return torch.where(binary, torch.sigmoid(logits), logits)

    def config(self) -> dict:
        """The keyword arguments it was built with (saved with checkpoints)."""
        return dict(getattr(self, "_config", {}))
