"""Pure-PyTorch ground truth for the embedding-bag family. Plain, slow and obviously right.

Layout shared by every backend (see ``rankops.ops.embedding_bag``):

* ``weights[R, D]``: T tables stacked row-wise; table t owns rows
  ``table_offsets[t] : table_offsets[t+1]``.
* bags are table-major: bag ``k = t * B + b`` holds ``indices[offsets[k] : offsets[k+1]]``,
  indices local to table t.
* ``out[b, t, :]`` is the pooled bag k, computed in fp32 and cast to the weights' dtype.
* ``argmax[b, t, d]`` (mode max only) is the position in ``indices`` of the lookup that won
  ``out[b, t, d]``, -1 for an empty bag; the backward routes the gradient there.

Every function takes ``mode`` as an int code (``MODES.index(name)``) and ``optimizer`` likewise
(``OPTIMIZERS.index(name)``), the same codes the native kernels take.
"""

from __future__ import annotations

import torch
from torch import Tensor

MODES = ("sum", "mean", "max")
SUM, MEAN, MAX = range(3)
OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")
SGD, ADAGRAD, ROWWISE_ADAGRAD = range(3)


def _layout(weights: Tensor, table_offsets: Tensor, indices: Tensor, offsets: Tensor):
    """(T, B, bag of each lookup [nnz], global row of each lookup [nnz], bag lengths [T*B])."""
    T = table_offsets.numel() - 1
    B = (offsets.numel() - 1) // T
    offsets = offsets.long()
    lengths = offsets[1:] - offsets[:-1]
    bag = torch.repeat_interleave(torch.arange(T * B, device=indices.device), lengths)
    rows = table_offsets.long()[bag // B] + indices.long()
    return T, B, bag, rows, lengths


def _scale(psw: Tensor | None, mode: int, bag: Tensor, lengths: Tensor) -> Tensor | None:
    """Factor of each lookup in its bag: its per-sample weight, 1/len for mean, None for 1."""
    if psw is not None:
        return psw.float()
    if mode == MEAN:
        return 1.0 / lengths[bag].float()
    return None


def forward(weights: Tensor, table_offsets: Tensor, indices: Tensor, offsets: Tensor, psw: Tensor | None,
            mode: int) -> tuple[Tensor, Tensor]:
    T, B, bag, rows, lengths = _layout(weights, table_offsets, indices, offsets)
    D = weights.shape[1]
    vals = weights[rows].float()
    scale = _scale(psw, mode, bag, lengths)
    if scale is not None:
        vals = vals * scale[:, None]
    if mode == MAX:
        out = torch.full((T * B, D), float("-inf"), device=weights.device)
        out.scatter_reduce_(0, bag[:, None].expand(-1, D), vals, "amax")
        # The winner of each (bag, d) is the first lookup equal to the max.
        pos = torch.arange(indices.numel(), device=weights.device)[:, None].expand(-1, D)
        pos = torch.where(vals == out[bag], pos, indices.numel())
        argmax = torch.full((T * B, D), indices.numel(), dtype=torch.int64, device=weights.device)
        argmax.scatter_reduce_(0, bag[:, None].expand(-1, D), pos, "amin")
        empty = (lengths == 0)[:, None]
        out = out.masked_fill(empty, 0.0)
        argmax = argmax.masked_fill(empty, -1)
        argmax = argmax.view(T, B, D).transpose(0, 1).contiguous()
    else:
        out = torch.zeros(T * B, D, device=weights.device).index_add_(0, bag, vals)
        argmax = torch.empty(0, dtype=torch.int64, device=weights.device)
    out = out.view(T, B, D).transpose(0, 1).contiguous().to(weights.dtype)
    return out, argmax


def _row_grads(grad: Tensor, weights: Tensor, table_offsets: Tensor, indices: Tensor, offsets: Tensor,
               psw: Tensor | None, mode: int, argmax: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-lookup fp32 gradient rows: (global row of each contribution, its [n, D] values, bag)."""
    T, B, bag, rows, lengths = _layout(weights, table_offsets, indices, offsets)
    D = weights.shape[1]
    g = grad.float().transpose(0, 1).reshape(T * B, D)  # bag-major
    if mode == MAX:
        # Each output element sends its gradient to the one lookup that won it.
        am = argmax.transpose(0, 1).reshape(T * B, D)
        contrib = torch.zeros(indices.numel(), D, device=grad.device)
        valid = am >= 0
        d = torch.arange(D, device=grad.device).expand(T * B, D)
        contrib.index_put_((am[valid], d[valid]), g[valid], accumulate=True)
        return rows, contrib, bag
    contrib = g[bag]
    scale = _scale(psw, mode, bag, lengths)
    if scale is not None:
        contrib = contrib * scale[:, None]
    return rows, contrib, bag


def backward(grad: Tensor, weights: Tensor, table_offsets: Tensor, indices: Tensor, offsets: Tensor,
             psw: Tensor | None, mode: int, argmax: Tensor, need_weight_grad: bool,
             need_psw_grad: bool) -> tuple[Tensor, Tensor]:
    """(dense grad of weights [R, D] or empty, grad of per_sample_weights [nnz] or empty)."""
    rows, contrib, bag = _row_grads(grad, weights, table_offsets, indices, offsets, psw, mode, argmax)
    gw = weights.new_empty(0)
    if need_weight_grad:
        gw = torch.zeros(weights.shape, device=weights.device).index_add_(0, rows, contrib).to(weights.dtype)
    gp = weights.new_empty(0)
    if need_psw_grad and psw is not None:
        T = table_offsets.numel() - 1
        g = grad.float().transpose(0, 1).reshape(-1, weights.shape[1])
        # d out[bag] / d psw[i] = weights[row_i] (sum mode).
        gp = (g[bag] * weights[rows].float()).sum(1).to(psw.dtype)
    return gw, gp


def sparse_weight_grad(grad: Tensor, weights: Tensor, table_offsets: Tensor, indices: Tensor, offsets: Tensor,
                       psw: Tensor | None, mode: int, argmax: Tensor) -> Tensor:
    """The weights' gradient as an uncoalesced torch.sparse_coo_tensor [R, D] with one entry per
    lookup (as torch.nn.EmbeddingBag(sparse=True) gives); used by every backend."""
    rows, contrib, _ = _row_grads(grad, weights, table_offsets, indices, offsets, psw, mode, argmax)
    return torch.sparse_coo_tensor(rows[None], contrib.to(weights.dtype), weights.shape, check_invariants=False)


def update(weights: Tensor, table_offsets: Tensor, indices: Tensor, offsets: Tensor, state: Tensor, grad: Tensor,
           psw: Tensor | None, mode: int, argmax: Tensor, optimizer: int, lr: float, eps: float) -> None:
    """The fused update, spelled out: reduce the gradient per unique row, then step the optimizer
    on those rows only (rows without a lookup have zero gradient, which all three leave alone).

    sgd:             w -= lr * g
    adagrad:         s += g*g (elementwise, s [R, D]);  w -= lr * g / (sqrt(s) + eps)
    rowwise_adagrad: s += mean_d(g*g) (s [R]);          w -= lr * g / (sqrt(s) + eps)
    """
    rows, contrib, _ = _row_grads(grad, weights, table_offsets, indices, offsets, psw, mode, argmax)
    uniq, inv = torch.unique(rows, return_inverse=True)
    g = torch.zeros(uniq.numel(), weights.shape[1], device=weights.device).index_add_(0, inv, contrib)
    w = weights[uniq].float()
    if optimizer == SGD:
        w = w - lr * g
    elif optimizer == ADAGRAD:
        s = state[uniq] + g * g
        state[uniq] = s
        w = w - lr * g / (s.sqrt() + eps)
    elif optimizer == ROWWISE_ADAGRAD:
        s = state[uniq] + (g * g).mean(1)
        state[uniq] = s
        w = w - lr * g / (s.sqrt() + eps)[:, None]
    else:
        raise ValueError(f"unknown optimizer code {optimizer}")
    weights[uniq] = w.to(weights.dtype)
