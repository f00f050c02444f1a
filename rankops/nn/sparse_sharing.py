"""Sparse sharing with a contrastive mask: the shared network of CSRec (Bai et al., A Contrastive
Sharing Model for Multi-Task Recommendation, WWW 2022), in our own formulation.

One MLP's weights ``W`` are shared by every task; each task t runs the subnetwork ``W * m_t``
picked by a learned binary mask ``m_t`` (sparse sharing). Where several tasks keep a parameter and
their gradients on it disagree in sign (a conflicting parameter), the **contrastive mask**
``c_t`` decides how much each task may move it: the share of the parameter's importance that is
task t's, so a conflicting parameter is optimised mostly for the task it matters most to.

Per layer (``W [out, in]``, bias ``b [out]``), per task t:

    mask:        m_t = 1[S_t > 0] forward, d m_t / d S_t = sigmoid'(S_t / tau) / tau backward
                 (straight-through; scores S_t [out, in] start at +score_init: every parameter on)
    subnetwork:  h_t <- act((W * m_t) h_t + b)
    importance:  I_t = EMA(|W * g_t|)     (first-order estimate of task t's loss change if the
                                            parameter were removed; g_t = task t's gradient on W)
    direction:   D_t = EMA(g_t)
    conflict:    k_t = m_t and there is a task s != t with m_s and D_s * D_t < 0
    contrastive: c_t = I_t / sum_{s : m_s} I_s where k_t, else 1
    update:      W's gradient from task t is c_t * g_t

Each task reaches ``W`` through its own subnetwork, so the gradient entering that path is task
t's alone and the statistics are kept per task in buffers, updated in the backward. Training
alternates the tasks (one task's loss per optimiser step, round robin:
``rankops.train.losses.AlternatingTasks``, which any model's ``loss()`` can use): a conflicting
parameter is then moved by one task at a time, each by its share, the paper's "fair competition";
with every task in one loss the shares of the tasks' steps are simply summed.

``mask_penalty()`` is the mean of ``sigmoid(S_t / tau)`` over every mask: added to the loss with a
small weight it turns off the parameters a task does not need, which is what makes the sharing sparse.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from rankops.nn.mlp import make_activation


class _ContrastiveGrad(torch.autograd.Function):
    """Identity on ``W``; backward scales task ``task``'s gradient by its contrastive mask and
    records the gradient in the layer's statistics (once per backward)."""

    @staticmethod
    def forward(ctx, weight: Tensor, layer: "SparseSharingLayer", task: int) -> Tensor:
        ctx.layer, ctx.task = layer, task
        ctx.save_for_backward(weight)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (weight,) = ctx.saved_tensors
        layer, t = ctx.layer, ctx.task
        with torch.no_grad():
            c = layer.contrastive_mask(t)
            layer.record(t, grad, weight)
        return grad * c, None, None


class SparseSharingLayer(nn.Module):
    """One shared linear layer with a learned mask per task and the contrastive mask on its weight.

    Shapes: ``forward(x [B, in_dim], task) -> [B, out_dim]`` (task t's subnetwork, no activation).
    """

    def __init__(self, in_dim: int, out_dim: int, num_tasks: int, score_init: float = 1.0,
                 temperature: float = 1.0, momentum: float = 0.9):
        super().__init__()
        if in_dim < 1 or out_dim < 1 or num_tasks < 1:
            raise ValueError(f"rankops.nn.SparseSharingLayer: needs in_dim, out_dim, num_tasks >= 1, got "
                             f"{in_dim}, {out_dim}, {num_tasks}")
        if not temperature > 0 or not 0.0 <= momentum < 1.0:
            raise ValueError(f"rankops.nn.SparseSharingLayer: needs temperature > 0 and 0 <= momentum < 1, got "
                             f"{temperature} and {momentum}")
        lin = nn.Linear(in_dim, out_dim)
        self.weight = nn.Parameter(lin.weight.detach().clone())
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scores = nn.Parameter(torch.full((num_tasks, out_dim, in_dim), float(score_init)))
        self.temperature, self.momentum = temperature, momentum
        self.register_buffer("importance", torch.zeros(num_tasks, out_dim, in_dim))
        self.register_buffer("direction", torch.zeros(num_tasks, out_dim, in_dim))
        self.in_dim, self.out_dim, self.num_tasks = in_dim, out_dim, num_tasks

    def mask(self, task: int) -> Tensor:
        """Task ``task``'s binary mask ``[out, in]``, with the straight-through gradient to its scores."""
        soft = torch.sigmoid(self.scores[task] / self.temperature)
        hard = (self.scores[task] > 0).to(soft.dtype)
        return hard + soft - soft.detach()

    @torch.no_grad()
    def masks(self) -> Tensor:
        """Every task's binary mask, ``[T, out, in]`` (bool)."""
        return self.scores > 0

    @torch.no_grad()
    def conflicts(self) -> Tensor:
        """``[T, out, in]`` bool: the parameters task t keeps whose recorded gradient direction
        disagrees with that of another task keeping them."""
        on = self.masks()
        sign = torch.sign(self.direction)
        out = torch.zeros_like(on)
        for t in range(self.num_tasks):
            for s in range(self.num_tasks):
                if s != t:
                    out[t] |= on[t] & on[s] & (sign[t] * sign[s] < 0)
        return out

    @torch.no_grad()
    def contrastive_mask(self, task: int) -> Tensor:
        """``c_task [out, in]``: the task's share of a conflicting parameter's importance, 1 elsewhere."""
        on = self.masks().to(self.importance.dtype)
        total = (self.importance * on).sum(0)
        share = self.importance[task] / total.clamp_min(1e-30)
        return torch.where(self.conflicts()[task] & (total > 0), share, torch.ones_like(share))

    @torch.no_grad()
    def record(self, task: int, grad: Tensor, weight: Tensor) -> None:
        """Fold task ``task``'s gradient on ``W`` into its importance and direction statistics."""
        m = self.momentum
        self.importance[task].mul_(m).add_((weight * grad).abs(), alpha=1 - m)
        self.direction[task].mul_(m).add_(grad, alpha=1 - m)

    def forward(self, x: Tensor, task: int) -> Tensor:
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"rankops.nn.SparseSharingLayer: task {task} outside [0, {self.num_tasks})")
        weight = _ContrastiveGrad.apply(self.weight, self, task) if torch.is_grad_enabled() else self.weight
        return torch.nn.functional.linear(x, weight * self.mask(task), self.bias)


class SparseSharing(nn.Module):
    """A shared MLP of ``hidden_units`` in which each task runs its own masked subnetwork.

    ``out[:, t] = act(L_k(... act(L_1(x, t)) ..., t))`` with every ``L_i`` a ``SparseSharingLayer``.

    ``forward(x, task=None)``: every task's output, ``[B, num_tasks, hidden_units[-1]]``; with
    ``task`` (the task the current optimiser step trains) only that task's subnetwork takes part
    in the backward (the others are computed without a graph): alternating updates.

    Example::

        ss = SparseSharing(64, num_tasks=2, hidden_units=(32, 16))
        h = ss(torch.randn(8, 64))                       # [8, 2, 16]
        loss = ... + 1e-3 * ss.mask_penalty()            # sparsity of the masks
    """

    def __init__(self, in_dim: int, num_tasks: int, hidden_units: Sequence[int] = (256, 128), activation: str = "relu",
                 score_init: float = 1.0, temperature: float = 1.0, momentum: float = 0.9):
        super().__init__()
        hidden_units = [int(h) for h in hidden_units]
        if in_dim < 1 or num_tasks < 1 or not hidden_units or any(h < 1 for h in hidden_units):
            raise ValueError(f"rankops.nn.SparseSharing: needs in_dim >= 1, num_tasks >= 1 and hidden widths >= 1, "
                             f"got {in_dim}, {num_tasks}, {hidden_units}")
        widths = [in_dim] + hidden_units
        self.layers = nn.ModuleList(SparseSharingLayer(a, b, num_tasks, score_init, temperature, momentum)
                                    for a, b in zip(widths[:-1], widths[1:]))
        self.activations = nn.ModuleList(make_activation(activation) for _ in hidden_units)
        self.num_tasks, self.output_dim = num_tasks, hidden_units[-1]

    def subnetwork(self, x: Tensor, task: int) -> Tensor:
        """Task ``task``'s output ``[B, hidden_units[-1]]``."""
        for layer, act in zip(self.layers, self.activations):
            x = act(layer(x, task))
        return x

    def forward(self, x: Tensor, task: int | None = None) -> Tensor:
        if task is not None and not 0 <= task < self.num_tasks:
            raise ValueError(f"rankops.nn.SparseSharing: task {task} outside [0, {self.num_tasks})")
        outs = []
        for t in range(self.num_tasks):
            if task is None or t == task:
                outs.append(self.subnetwork(x, t))
            else:
                with torch.no_grad():
                    outs.append(self.subnetwork(x, t))
        return torch.stack(outs, 1)

    def mask_penalty(self) -> Tensor:
        """Mean of ``sigmoid(S / tau)`` over every mask entry: the soft fraction of parameters kept."""
        return torch.stack([torch.sigmoid(l.scores / l.temperature).mean() for l in self.layers]).mean()

    @torch.no_grad()
    def sharing(self) -> dict[str, float]:
        """How the tasks share the weights: the fraction of parameters each task keeps, that every
        task keeps, and that are in conflict (kept by a task and disputed by another)."""
        kept = torch.cat([l.masks().flatten(1) for l in self.layers], 1).float()  # [T, P]
        conflict = torch.cat([l.conflicts().flatten(1) for l in self.layers], 1).any(0).float()
        out = {f"kept/{t}": float(kept[t].mean()) for t in range(self.num_tasks)}
        out["kept/all"] = float(kept.prod(0).mean())
        out["conflict"] = float(conflict.mean())
        return out
