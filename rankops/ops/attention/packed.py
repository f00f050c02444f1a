"""DIN's activation unit in training with Dice on batch statistics, over the valid keys only.

Dice's statistics span the batch, so this unit cannot run as the fused per-sample kernel that serves
sigmoid / PReLU units and inference (csrc/cpu/attention.cpp); it runs as PyTorch products around
``rankops.dice``. What it saves over the padded composition (``_din_padded_scores``):
- only the N valid keys are scored: sequences are padded to their longest, and with lengths uniform in
  [1, L] half of the ``[B, L]`` grid is padding, which the padded path multiplies, gates and
  differentiates like the rest;
- the first layer is one product over the packed rows,
  ``W1 [q, k, q-k, q*k] = c_q + [k, k*q] [Wb - Wc | Wd]^T`` with ``c_q = (Wa + Wc) q + b1`` per sample;
- each ``[N, H]`` product and its input gradient is written into a block of rankops' CPU cache
  (``rankops_C::empty_hugepage``: huge pages, freed blocks reused), not a fresh tensor whose pages
  fault in 4 KiB at a time (1.8 us each under the VM's hypervisor): ``[207335, 40] x [40, 80]``
  took 41 ms into a fresh tensor, 21 ms into a reused one.
Forward + backward at B=4096, L=100 (lengths U[1, 100]), d=16, units 80-40, 2 threads: padded 549 ms,
packed 275 ms, packed into cached blocks 252-263 ms against 349-370 ms uncached in one process.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rankops.ops import _dispatch
from rankops.ops.activation import dice


def packs(keys: Tensor) -> bool:
    """Whether Dice-on-batch-statistics training scores only the valid keys (``din_packed_scores``):
    outside the reference backend (what a user writes scores the padded [B, L] grid) and outside
    torch.compile (the number of valid keys is data: a shape fullgraph cannot trace)."""
    from rankops import backend

    return _dispatch.eager(keys) and backend.current() != "reference"


def _rows(shape: tuple[int, int], like: Tensor) -> Tensor:
    """An uninitialised ``[N, H]`` block: from rankops' huge-page cache on the CPU (when the extension is
    built), torch's allocator elsewhere (CUDA's caches already)."""
    if like.device.type == "cpu" and hasattr(torch.ops.rankops_C, "empty_hugepage"):
        return torch.ops.rankops_C.empty_hugepage(list(shape), like.dtype)
    return like.new_empty(shape)


class _RowsAffine(torch.autograd.Function):
    """``y = x W^T + b`` (``base[index] + x W^T`` when a base is given), y and the input gradient
    ``g W`` into cached blocks (``_rows``); the weight, bias and base gradients as autograd computes them."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, base: Tensor | None, index: Tensor | None):
        y = _rows((x.shape[0], weight.shape[0]), x)
        if base is not None:
            torch.index_select(base, 0, index, out=y)
            y.addmm_(x, weight.t())
        elif bias is not None:
            torch.addmm(bias, x, weight.t(), out=y)
        else:
            torch.mm(x, weight.t(), out=y)
        ctx.save_for_backward(x, weight, index)
        ctx.base_rows = base.shape[0] if base is not None else None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        x, weight, index = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx = torch.mm(g, weight, out=_rows((g.shape[0], weight.shape[1]), g)) if need[0] else None
        gw = g.t().mm(x) if need[1] else None
        gb = g.sum(0) if need[2] else None
        gbase = g.new_zeros(ctx.base_rows, g.shape[1]).index_add_(0, index, g) if need[3] else None
        return gx, gw, gb, gbase, None


def din_packed_scores(qf: Tensor, keys: Tensor, mask: Tensor, layers, alphas, w_out: Tensor, b_out: Tensor,
                      eps: float, batch_stats: list | None) -> tuple[Tensor, Tensor, Tensor]:
    """The Dice unit's score of every valid key: ``(scores [N], rows [N], k [N, d])``, rows the flat
    ``b * L + l`` of each valid key and k its fp32 embedding (the padding is never read).

    qf ``[B, d]`` fp32, keys ``[B, L, d]``, mask ``[B, L]`` the valid keys, layers ``[(W1, b1)]`` or
    ``[(W1, b1), (W2, b2)]``; each layer's batch (mean, var) is appended to ``batch_stats`` for the
    caller's running statistics."""
    B, L, d = keys.shape
    rows = mask.reshape(-1).nonzero().squeeze(1)  # [N] flat (b, l) of the valid keys
    sample = rows // L
    k = keys.reshape(B * L, d).index_select(0, rows).float()  # [N, d]
    (w1, b1), rest = layers[0], layers[1:]
    wa, wb, wc, wd = w1.float().split(d, dim=1)
    c = qf @ (wa + wc).T + b1.float()  # [B, H1]
    x = _RowsAffine.apply(torch.cat([k, k * qf.index_select(0, sample)], 1), torch.cat([wb - wc, wd], 1), None, c,
                          sample)  # [N, H1]
    valid = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for i in range(len(layers)):
        if i > 0:
            w, b = rest[i - 1]
            x = _RowsAffine.apply(x, w.float(), b.float(), None, None)
        x, mean, var = dice(x, valid, alphas[i].float(), eps)
        if batch_stats is not None:
            batch_stats.append((mean.detach(), var.detach()))
    s = torch.addmv(b_out.float().reshape(()).expand(x.shape[0]), x, w_out.float().reshape(-1))  # [N]
    return s, rows, k
