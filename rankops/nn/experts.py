"""Multi-task mixtures of experts: MMoE (Ma et al., KDD 2018) and PLE (Tang et al., RecSys 2020)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from rankops.nn.mlp import MLP


def _mix(experts: Tensor, gate_logits: Tensor) -> Tensor:
    """``sum_e softmax(gate)_e * experts[:, e]``: experts ``[B, E, H]``, gate ``[B, E]`` -> ``[B, H]``."""
    return torch.bmm(torch.softmax(gate_logits, -1)[:, None, :], experts)[:, 0]


class MMoE(nn.Module):
    """Multi-gate mixture of experts: ``out[:, t] = sum_e g_t(x)_e * expert_e(x)`` with
    ``g_t = softmax(W_t x)``, one gate per task over experts shared by all tasks.

    Shapes: ``x [B, in_dim] -> [B, num_tasks, expert_hidden_units[-1]]``.

    Example::

        mmoe = MMoE(128, num_tasks=2, num_experts=4, expert_hidden_units=(64,))
        h = mmoe(torch.randn(32, 128))    # [32, 2, 64]
    """

    def __init__(self, in_dim: int, num_tasks: int, num_experts: int = 4, expert_hidden_units: Sequence[int] = (256, 128),
                 activation: str = "relu", dropout: float = 0.0, norm: str | None = None):
        super().__init__()
        if num_tasks < 1 or num_experts < 1 or not expert_hidden_units:
            raise ValueError(f"rankops.nn.MMoE: needs num_tasks >= 1, num_experts >= 1 and expert widths, got "
                             f"{num_tasks}, {num_experts}, {tuple(expert_hidden_units)}")
        self.num_tasks, self.num_experts = num_tasks, num_experts
        self.experts = nn.ModuleList(MLP(in_dim, expert_hidden_units, activation, dropout, norm)
                                     for _ in range(num_experts))
        self.gates = nn.Linear(in_dim, num_tasks * num_experts)  # all tasks' gates in one product
        self.output_dim = self.experts[0].output_dim

    def forward(self, x: Tensor) -> Tensor:
        experts = torch.stack([e(x) for e in self.experts], 1)  # [B, E, H]
        gates = torch.softmax(self.gates(x).view(-1, self.num_tasks, self.num_experts), -1)  # [B, T, E]
        return torch.bmm(gates, experts)  # [B, T, H]


class _CGC(nn.Module):
    """One customized gate control level of PLE: per task ``specific`` experts of its own plus
    ``shared`` experts; task t's gate mixes its own and the shared ones, the shared gate (every
    level but the last) mixes all of them for the next level's shared input."""

    def __init__(self, in_dim: int, num_tasks: int, specific: int, shared: int, hidden: Sequence[int],
                 activation: str, dropout: float, norm: str | None, last: bool):
        super().__init__()
        mk = lambda: MLP(in_dim, hidden, activation, dropout, norm)  # noqa: E731
        self.num_tasks, self.specific, self.shared, self.last = num_tasks, specific, shared, last
        self.task_experts = nn.ModuleList(nn.ModuleList(mk() for _ in range(specific)) for _ in range(num_tasks))
        self.shared_experts = nn.ModuleList(mk() for _ in range(shared))
        self.task_gates = nn.ModuleList(nn.Linear(in_dim, specific + shared) for _ in range(num_tasks))
        self.shared_gate = None if last else nn.Linear(in_dim, num_tasks * specific + shared)
        self.output_dim = self.shared_experts[0].output_dim if shared else self.task_experts[0][0].output_dim

    def forward(self, task_inputs: list[Tensor], shared_input: Tensor) -> tuple[list[Tensor], Tensor | None]:
        shared = [e(shared_input) for e in self.shared_experts]
        own = [[e(task_inputs[t]) for e in self.task_experts[t]] for t in range(self.num_tasks)]
        outs = [_mix(torch.stack(own[t] + shared, 1), self.task_gates[t](task_inputs[t]))
                for t in range(self.num_tasks)]
        if self.last:
            return outs, None
        every = [h for hs in own for h in hs] + shared
        return outs, _mix(torch.stack(every, 1), self.shared_gate(shared_input))


class PLE(nn.Module):
    """Progressive layered extraction: ``num_levels`` CGC levels, each with ``num_specific_experts``
    experts per task and ``num_shared_experts`` shared ones (PLE's explicit separation of shared
    and task-specific knowledge).

    Shapes: ``x [B, in_dim] -> [B, num_tasks, expert_hidden_units[-1]]``.
    """

    def __init__(self, in_dim: int, num_tasks: int, num_levels: int = 2, num_specific_experts: int = 1,
                 num_shared_experts: int = 1, expert_hidden_units: Sequence[int] = (256, 128),
                 activation: str = "relu", dropout: float = 0.0, norm: str | None = None):
        super().__init__()
        if num_tasks < 1 or num_levels < 1 or num_specific_experts < 1 or num_shared_experts < 0 \
                or not expert_hidden_units:
            raise ValueError(f"rankops.nn.PLE: needs num_tasks, num_levels, num_specific_experts >= 1, "
                             f"num_shared_experts >= 0 and expert widths; got {num_tasks}, {num_levels}, "
                             f"{num_specific_experts}, {num_shared_experts}, {tuple(expert_hidden_units)}")
        self.num_tasks = num_tasks
        levels, width = [], in_dim
        for lvl in range(num_levels):
            cgc = _CGC(width, num_tasks, num_specific_experts, num_shared_experts, expert_hidden_units, activation,
                       dropout, norm, last=lvl == num_levels - 1)
            levels.append(cgc)
            width = cgc.output_dim
        self.levels = nn.ModuleList(levels)
        self.output_dim = width

    def forward(self, x: Tensor) -> Tensor:
        task_inputs, shared = [x] * self.num_tasks, x
        for level in self.levels:
            task_inputs, shared = level(task_inputs, shared)
        return torch.stack(task_inputs, 1)
