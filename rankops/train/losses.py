"""Per-task losses: sigmoid cross-entropy (binary) or squared error (regression), weighted per task."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def multitask_loss(logits: Tensor, labels: Tensor, tasks: Sequence) -> Tensor:
    """``sum_t w_t * mean_b loss_t(logits[b, t], labels[b, t])`` with ``loss_t`` by ``tasks[t].kind``."""
    if logits.shape != labels.shape or logits.shape[1] != len(tasks):
        raise ValueError(f"multitask_loss: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must both be "
                         f"[B, {len(tasks)}]")
    total = logits.new_zeros(())
    for t, task in enumerate(tasks):
        total = total + task.weight * task_loss(logits[:, t], labels[:, t], task.kind)
    return total


def task_loss(logits: Tensor, labels: Tensor, kind: str) -> Tensor:
    """One task's mean loss over ``[B]``: sigmoid cross-entropy (``binary``) or squared error (``regression``)."""
    if kind == "binary":
        return F.binary_cross_entropy_with_logits(logits, labels)
    if kind == "regression":
        return F.mse_loss(logits, labels)
    raise ValueError(f"task_loss: kind must be 'binary' or 'regression', got {kind!r}")


class AlternatingTasks(nn.Module):
    """Alternating task updates: training step ``k`` optimises task ``k mod T`` alone,
    ``loss_k = w_t * mean_b loss_t(logits[b, t], labels[b, t])`` with ``t = k mod T``.

    The schedule runs through the one Trainer without changing it: the trainer calls
    ``model.loss(logits, labels)`` once per optimiser step, so a model whose ``loss()`` returns
    ``schedule.loss(...)`` in training mode trains one task per step, round robin (its forward may
    read ``schedule.current`` to know which task this step trains). The step counter is saved in
    the state dict (``get_extra_state``), so a resumed run continues the same rotation.
    """

    def __init__(self, num_tasks: int):
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"AlternatingTasks: needs num_tasks >= 1, got {num_tasks}")
        self.num_tasks, self.step = num_tasks, 0

    @property
    def current(self) -> int:
        """The task the next ``loss()`` call trains."""
        return self.step % self.num_tasks

    def loss(self, logits: Tensor, labels: Tensor, tasks: Sequence) -> Tensor:
        """The current task's weighted loss; advances the schedule by one step."""
        if logits.shape != labels.shape or logits.shape[1] != len(tasks) or len(tasks) != self.num_tasks:
            raise ValueError(f"AlternatingTasks: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must both "
                             f"be [B, {self.num_tasks}] (one column per task)")
        t = self.current
        self.step += 1
        return tasks[t].weight * task_loss(logits[:, t], labels[:, t], tasks[t].kind)

    def get_extra_state(self) -> dict:
        return {"step": self.step}

    def set_extra_state(self, state: dict) -> None:
        self.step = int(state["step"])


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
