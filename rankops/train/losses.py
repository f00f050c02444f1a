"""Per-task losses: sigmoid cross-entropy (binary) or squared error (regression), weighted per task."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def multitask_loss(logits: Tensor, labels: Tensor, tasks: Sequence) -> Tensor:
    """``sum_t w_t * mean_b loss_t(logits[b, t], labels[b, t])`` with ``loss_t`` by ``tasks[t].kind``."""
    if logits.shape != labels.shape or logits.shape[1] != len(tasks):
        raise ValueError(f"multitask_loss: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must both be "
                         f"[B, {len(tasks)}]")
    total = logits.new_zeros(())
    for t, task in enumerate(tasks):
        if task.kind == "binary":
            loss = F.binary_cross_entropy_with_logits(logits[:, t], labels[:, t])
        else:
            loss = F.mse_loss(logits[:, t], labels[:, t])
        total = total + task.weight * loss
    return total


def esmm_loss(ctr_logit: Tensor, cvr_logit: Tensor, click: Tensor, conversion: Tensor,
              weights: tuple[float, float] = (1.0, 1.0)) -> Tensor:
    """ESMM over the whole impression space: ``BCE(pCTR, click) + BCE(pCTR * pCVR, click & conversion)``.

    pCTCVR is formed in log space, ``log pCTCVR = logsigmoid(ctr) + logsigmoid(cvr)``, so that tiny
    products neither underflow nor give infinite gradients.
    """
    ctr = F.binary_cross_entropy_with_logits(ctr_logit, click)
    log_p = F.logsigmoid(ctr_logit) + F.logsigmoid(cvr_logit)
    log_1mp = torch.log1p(-torch.exp(log_p).clamp(max=1 - 1e-7))
    ctcvr = -(conversion * log_p + (1 - conversion) * log_1mp).mean()
    return weights[0] * ctr + weights[1] * ctcvr
