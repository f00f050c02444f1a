"""Embedding bags: pooled lookups into one table, or into T tables stacked in one buffer.

Public ops (``torch.ops.rankops.*``, each with a fake impl and an autograd formula):

* ``embedding_bag(weight[N, D], indices[nnz], offsets[B+1], per_sample_weights=None, mode="sum")
  -> [B, D]``
* ``batched_embedding_bag(weights[R, D], table_offsets[T+1], indices[nnz], offsets[T*B+1],
  per_sample_weights=None, mode="sum") -> [B, T, D]``

Bag ``k = t*B + b`` (table-major) holds the lookups ``indices[offsets[k]:offsets[k+1]]``, local to
table t, whose rows are ``weights[table_offsets[t] : table_offsets[t+1]]``::

    sum:  out[b, t] = sum_i  psw[i] * weights[table_offsets[t] + indices[i]]   (psw = 1 without it)
    mean: out[b, t] = (1 / len_k) * sum_i weights[table_offsets[t] + indices[i]]
    max:  out[b, t, d] = max_i weights[table_offsets[t] + indices[i], d]
    empty bag: out[b, t] = 0

Gradients: weights (dense, or a torch.sparse_coo_tensor with ``sparse=True``) and
per_sample_weights. ``fused_batched_embedding_bag`` instead applies SGD / Adagrad / row-wise
Adagrad to the touched rows inside the backward (see ``rankops.ops.embedding_bag.optim``).

Index and offset values are checked before any kernel runs (the cpp kernels check in their own
first pass, the other backends here), so a bad batch raises IndexError / ValueError naming the
table and the position, and leaves weights and optimizer state untouched.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from rankops import backend as _backend
from rankops.ops import _checks, _declare, _dispatch
from rankops.ops.embedding_bag import reference as _ref
from rankops.ops.embedding_bag.optim import FusedOptimizer

MODES = _ref.MODES
OPTIMIZERS = _ref.OPTIMIZERS

_REF = "rankops.ops.embedding_bag.reference"
_TRITON = "rankops.ops.embedding_bag.triton"
_NATIVE = "torch.ops:rankops_C"


def _impls(py_name: str, native_name: str) -> dict[str, str]:
    return {
        "reference": f"{_REF}:{py_name}",
        "cpp": f"{_NATIVE}.{native_name}",
        "cuda": f"{_NATIVE}.{native_name}",
        "triton": f"{_TRITON}:{py_name}",
    }


_FORWARD = _impls("forward", "batched_embedding_bag")
_BACKWARD = _impls("backward", "batched_embedding_bag_backward")
_UPDATE = _impls("update", "batched_embedding_bag_update")
# Backends whose kernels check index and offset values themselves (in a first parallel pass).
_SELF_CHECKING = ("cpp",)


# ---------------------------------------------------------------------------------------------
# argument checks


def _check_static(op: str, weights, table_offsets, indices, offsets, psw, mode) -> tuple[Tensor, Tensor]:
    """Types, ranks, dtypes, devices and sizes: everything knowable without reading values.
    Returns (indices, offsets) with offsets cast to the indices' dtype (the kernels take one)."""
    _checks.tensor(op, "weights", weights, 2, "[rows, dim]")
    _checks.floating(op, "weights", weights)
    _checks.tensor(op, "table_offsets", table_offsets, 1, "[T+1]")
    _checks.integer(op, "table_offsets", table_offsets)
    _checks.tensor(op, "indices", indices, 1, "[nnz]")
    _checks.integer(op, "indices", indices)
    _checks.tensor(op, "offsets", offsets, 1, "[T*B+1]")
    _checks.integer(op, "offsets", offsets)
    _checks.same_device(op, "weights", weights, table_offsets=table_offsets, indices=indices, offsets=offsets,
                        per_sample_weights=psw)
    if mode not in MODES:
        raise ValueError(f"rankops.{op}: mode must be one of {MODES}, got {mode!r}")
    T = table_offsets.shape[0] - 1
    if T < 1:
        raise ValueError(f"rankops.{op}: table_offsets must have at least 2 entries (T+1), got {table_offsets.shape[0]}")
    if offsets.shape[0] < 1 or (offsets.shape[0] - 1) % T:
        raise ValueError(
            f"rankops.{op}: offsets must have T*B+1 entries for T={T} tables, got {offsets.shape[0]}"
        )
    if psw is not None:
        _checks.tensor(op, "per_sample_weights", psw, 1, "[nnz]")
        _checks.same_dtype(op, "weights", weights, per_sample_weights=psw)
        if mode != "sum":
            raise ValueError(f"rankops.{op}: per_sample_weights need mode='sum' (as torch's embedding_bag), got {mode!r}")
        if psw.shape[0] != indices.shape[0]:
            raise ValueError(
                f"rankops.{op}: per_sample_weights has {psw.shape[0]} entries but indices has {indices.shape[0]}; "
                "they must match (one weight per lookup)"
            )
    if offsets.dtype != indices.dtype:
        offsets = offsets.to(indices.dtype)
    return indices, offsets


def validate_values(op: str, num_rows: int, table_offsets: Tensor, indices: Tensor, offsets: Tensor) -> None:
    """Raise ValueError for bad table_offsets/offsets and IndexError for an index outside its
    table, naming the table, the bag and the position. Reads values (one device sync)."""
    to = table_offsets.long()
    T = to.numel() - 1
    if to[0].item() != 0 or bool((to[1:] < to[:-1]).any()) or to[-1].item() != num_rows:
        shown = to[:8].tolist()
        raise ValueError(
            f"rankops.{op}: table_offsets must rise from 0 to weights.shape[0] = {num_rows}, got "
            f"{shown}{' ...' if T + 1 > 8 else ''} (last {to[-1].item()})"
        )
    off = offsets.long()
    nnz = indices.numel()
    B = (off.numel() - 1) // T
    if off[0].item() != 0:
        raise ValueError(f"rankops.{op}: offsets[0] = {off[0].item()} must be 0 (table 0, bag 0)")
    dec = torch.nonzero(off[1:] < off[:-1])
    if dec.numel():
        p = int(dec[0, 0])
        raise ValueError(
            f"rankops.{op}: offsets decrease at position {p + 1}: offsets[{p + 1}] = {off[p + 1].item()} < "
            f"offsets[{p}] = {off[p].item()} (table {p // B}, bag {p % B})"
        )
    if off[-1].item() != nnz:
        raise ValueError(
            f"rankops.{op}: offsets[-1] = offsets[{off.numel() - 1}] = {off[-1].item()} must equal the number "
            f"of indices ({nnz})"
        )
    if nnz == 0:
        return
    bag = torch.repeat_interleave(torch.arange(T * B, device=off.device), off[1:] - off[:-1])
    table = bag // B
    idx = indices.long()
    bad = torch.nonzero((idx < 0) | (idx >= (to[1:] - to[:-1])[table]))
    if bad.numel():
        p = int(bad[0, 0])
        t = int(table[p])
        raise IndexError(
            f"rankops.{op}: indices[{p}] = {idx[p].item()} is out of range for table {t} with "
            f"{int(to[t + 1] - to[t])} rows (bag {int(bag[p]) % B} of table {t})"
        )


def _run(impls: dict[str, str], op: str, weights: Tensor, table_offsets: Tensor, indices: Tensor, offsets: Tensor,
         *rest, validate: bool = True):
    name = _backend.select(op, weights.device, tuple(impls))
    if validate and name not in _SELF_CHECKING:
        validate_values(op, weights.shape[0], table_offsets, indices, offsets)
    return _dispatch._resolve(impls[name])(weights, table_offsets, indices, offsets, *rest)


def _single_table(weight: Tensor) -> Tensor:
    return torch.tensor([0, weight.shape[0]], dtype=torch.int64, device=weight.device)


# ---------------------------------------------------------------------------------------------
# what the two bag ops share: their fakes' shapes and their autograd formula


def _fake_forward(weights, table_offsets, offsets, mode, batch_dims):
    T = table_offsets.shape[0] - 1
    B = (offsets.shape[0] - 1) // T
    shape = (B, T, weights.shape[1]) if batch_dims else (B, weights.shape[1])
    argmax = weights.new_empty(shape if mode == "max" else (0,), dtype=torch.int64)
    return weights.new_empty(shape), argmax


def _fake_backward(weights, indices, per_sample_weights, need_weight_grad, need_psw_grad):
    gw = weights.new_empty(weights.shape if need_weight_grad else (0,))
    gp = weights.new_empty(indices.shape if need_psw_grad and per_sample_weights is not None else (0,))
    return gw, gp


def _formula(weight: str, sparse_grad):
    """The bags' autograd formula: a dense weight gradient and the per-sample weights' from the
    backward op (asked for only what autograd wants), a sparse weight gradient from
    ``sparse_grad(values)``."""

    def formula(values, needs, run):
        psw, need_w, sparse = values["per_sample_weights"], needs[weight], values["sparse"]
        dense, need_p = need_w and not sparse, psw is not None and needs["per_sample_weights"]
        got = {weight: sparse_grad(values)} if need_w and sparse else {}
        if dense or need_p:
            gw, gp = run(need_weight_grad=dense, need_psw_grad=need_p)
            got.update({weight: gw} if dense else {}, per_sample_weights=gp)
        return got

    return formula


# ---------------------------------------------------------------------------------------------
# batched_embedding_bag


def _batched_kernel(weights, table_offsets, indices, offsets, per_sample_weights, mode, sparse):
    return _run(_FORWARD, "batched_embedding_bag", *_declare.contiguous(weights, table_offsets, indices, offsets,
                                                                        per_sample_weights), MODES.index(mode))


def _batched_backward_kernel(grad, weights, table_offsets, indices, offsets, per_sample_weights, mode, argmax,
                             need_weight_grad, need_psw_grad):
    name = _backend.select("batched_embedding_bag", weights.device, tuple(_BACKWARD))
    args = _declare.contiguous(grad, weights, table_offsets, indices, offsets, per_sample_weights)
    return _dispatch._resolve(_BACKWARD[name])(*args, MODES.index(mode), argmax.contiguous(), need_weight_grad,
                                               need_psw_grad)


def _batched_sparse_grad(v):
    return _ref.sparse_weight_grad(v["grad"], v["weights"], v["table_offsets"], v["indices"], v["offsets"],
                                   v["per_sample_weights"], MODES.index(v["mode"]), v["argmax"])


def _batched_fake(weights, table_offsets, indices, offsets, per_sample_weights, mode, sparse):
    return _fake_forward(weights, table_offsets, offsets, mode, True)


def _batched_backward_fake(grad, weights, table_offsets, indices, offsets, per_sample_weights, mode, argmax,
                           need_weight_grad, need_psw_grad):
    return _fake_backward(weights, indices, per_sample_weights, need_weight_grad, need_psw_grad)


def _batched_backward(grad: Tensor, weights: Tensor, table_offsets: Tensor, indices: Tensor, offsets: Tensor,
                      per_sample_weights: Optional[Tensor], mode: str, argmax: Tensor, need_weight_grad: bool,
                      need_psw_grad: bool) -> tuple[Tensor, Tensor]: ...


@_declare.op("batched_embedding_bag", outputs=("out", "argmax"), grads=("weights", "per_sample_weights"),
             kernel=_batched_kernel, backward_kernel=_batched_backward_kernel,
             fake=_batched_fake, backward=_batched_backward, backward_fake=_batched_backward_fake,
             keep=("sparse",), formula=_formula("weights", _batched_sparse_grad))
def _batched(weights: Tensor, table_offsets: Tensor, indices: Tensor, offsets: Tensor,
             per_sample_weights: Optional[Tensor], mode: str, sparse: bool) -> tuple[Tensor, Tensor]: ...


def batched_embedding_bag(weights: Tensor, table_offsets: Tensor, indices: Tensor, offsets: Tensor,
                          per_sample_weights: Tensor | None = None, mode: str = "sum", *,
                          sparse: bool = False) -> Tensor:
    """T embedding bags in one call.

    Args:
        weights: ``[R, D]`` the T tables stacked row-wise, fp32 / fp16 / bf16 (accumulated in fp32).
        table_offsets: ``[T+1]`` int, table t owns rows ``table_offsets[t]:table_offsets[t+1]``.
        indices: ``[nnz]`` int32 / int64, row numbers local to their table.
        offsets: ``[T*B+1]`` int, table-major bag boundaries into ``indices``: bag ``t*B + b`` is
            ``indices[offsets[t*B+b] : offsets[t*B+b+1]]``; starts at 0, never decreases, ends at nnz.
        per_sample_weights: ``[nnz]`` in weights' dtype, scales each lookup (mode "sum" only).
        mode: "sum", "mean" or "max"; an empty bag gives zeros in every mode.
        sparse: return the weights' gradient as an uncoalesced ``torch.sparse_coo_tensor``.
    Returns:
        ``[B, T, D]`` in weights' dtype: ``out[b, t] = pool_{i in bag t*B+b} weights[table_offsets[t] + indices[i]]``.
    Raises:
        IndexError: an index outside its table (message names the position, table and bag).
        ValueError: offsets not starting at 0, decreasing, not ending at nnz, of the wrong length;
            per_sample_weights of the wrong size; bad table_offsets; unknown mode.
    """
    op = "batched_embedding_bag"
    indices, offsets = _check_static(op, weights, table_offsets, indices, offsets, per_sample_weights, mode)
    return _batched(weights, table_offsets, indices, offsets, per_sample_weights, mode, bool(sparse))[0]


# ---------------------------------------------------------------------------------------------
# embedding_bag: the one-table case, an op of its own so that graphs and profiles name it


def _single_kernel(weight, indices, offsets, per_sample_weights, mode, sparse):
    weight = weight.contiguous()
    out, argmax = _run(_FORWARD, "embedding_bag", weight, _single_table(weight),
                       *_declare.contiguous(indices, offsets, per_sample_weights), MODES.index(mode))
    B, D = out.shape[0], out.shape[2]
    return out.reshape(B, D), (argmax.reshape(B, D) if mode == "max" else argmax)


def _as_one_table(grad, argmax, mode):
    B, D = grad.shape
    return grad.reshape(B, 1, D), (argmax.reshape(B, 1, D) if mode == "max" else argmax)


def _single_backward_kernel(grad, weight, indices, offsets, per_sample_weights, mode, argmax, need_weight_grad,
                            need_psw_grad):
    name = _backend.select("embedding_bag", weight.device, tuple(_BACKWARD))
    grad, argmax = _as_one_table(grad, argmax, mode)
    return _dispatch._resolve(_BACKWARD[name])(
        grad.contiguous(), weight.contiguous(), _single_table(weight),
        *_declare.contiguous(indices, offsets, per_sample_weights), MODES.index(mode), argmax, need_weight_grad,
        need_psw_grad)


def _single_sparse_grad(v):
    grad, argmax = _as_one_table(v["grad"], v["argmax"], v["mode"])
    return _ref.sparse_weight_grad(grad, v["weight"], _single_table(v["weight"]), v["indices"], v["offsets"],
                                   v["per_sample_weights"], MODES.index(v["mode"]), argmax)


def _single_fake(weight, indices, offsets, per_sample_weights, mode, sparse):
    return _fake_forward(weight, weight.new_empty(2, dtype=torch.int64), offsets, mode, False)


def _single_backward_fake(grad, weight, indices, offsets, per_sample_weights, mode, argmax, need_weight_grad,
                          need_psw_grad):
    return _fake_backward(weight, indices, per_sample_weights, need_weight_grad, need_psw_grad)


def _single_backward(grad: Tensor, weight: Tensor, indices: Tensor, offsets: Tensor,
                     per_sample_weights: Optional[Tensor], mode: str, argmax: Tensor, need_weight_grad: bool,
                     need_psw_grad: bool) -> tuple[Tensor, Tensor]: ...


@_declare.op("embedding_bag", outputs=("out", "argmax"), grads=("weight", "per_sample_weights"),
             kernel=_single_kernel, backward_kernel=_single_backward_kernel,
             fake=_single_fake, backward=_single_backward, backward_fake=_single_backward_fake,
             keep=("sparse",), formula=_formula("weight", _single_sparse_grad))
def _single(weight: Tensor, indices: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor], mode: str,
            sparse: bool) -> tuple[Tensor, Tensor]: ...


def embedding_bag(weight: Tensor, indices: Tensor, offsets: Tensor, per_sample_weights: Tensor | None = None,
                  mode: str = "sum", *, sparse: bool = False) -> Tensor:
    """Pooled lookup into one table: ``batched_embedding_bag`` with T = 1.

    Args:
        weight: ``[N, D]`` fp32 / fp16 / bf16.
        indices: ``[nnz]`` int32 / int64 in ``[0, N)``.
        offsets: ``[B+1]``, bag b is ``indices[offsets[b]:offsets[b+1]]`` (note: B+1 entries, like
            torch's ``include_last_offset=True``).
        per_sample_weights: ``[nnz]``, mode "sum" only.
        mode: "sum", "mean" or "max"; empty bags give zeros.
        sparse: sparse COO gradient for ``weight``.
    Returns:
        ``[B, D]`` in weight's dtype.
    """
    op = "embedding_bag"
    _checks.tensor(op, "weight", weight, 2, "[rows, dim]")
    # The static checks read only table_offsets' shape, dtype and device.
    shape_only = torch.empty(2, dtype=torch.int64, device=weight.device)
    indices, offsets = _check_static(op, weight, shape_only, indices, offsets, per_sample_weights, mode)
    return _single(weight, indices, offsets, per_sample_weights, mode, bool(sparse))[0]


# ---------------------------------------------------------------------------------------------
# fused backward + optimizer


@torch.library.custom_op("rankops::batched_embedding_bag_update", mutates_args=("weights", "state"))
def _update(weights: Tensor, state: Tensor, grad: Tensor, table_offsets: Tensor, indices: Tensor, offsets: Tensor,
            per_sample_weights: Optional[Tensor], pooling: str, argmax: Tensor, optimizer: str, lr: Tensor,
            eps: float) -> None:
    """``lr`` is a 0-d tensor read when the step runs (see FusedOptimizer.lr_tensor). ``pooling``
    is the other ops' ``mode``: torch.compile's functionalization of a mutating op passes a
    ``mode`` keyword of its own."""
    op = "batched_embedding_bag_update"
    if not weights.is_contiguous() or not state.is_contiguous():
        raise ValueError(f"rankops.{op}: weights and state must be contiguous (they are updated in place)")
    T = table_offsets.shape[0] - 1
    want = ((offsets.shape[0] - 1) // T, T, weights.shape[1])
    if tuple(grad.shape) != want:
        raise ValueError(f"rankops.{op}: grad has shape {tuple(grad.shape)}, expected [B, T, D] = {list(want)}")
    _run(_UPDATE, "batched_embedding_bag_update", weights, table_offsets.contiguous(), indices.contiguous(),
         offsets.contiguous(), state, grad.contiguous(),
         None if per_sample_weights is None else per_sample_weights.contiguous(), MODES.index(pooling),
         argmax.contiguous(), OPTIMIZERS.index(optimizer), float(lr), float(eps))


@_update.register_fake
def _(weights, state, grad, table_offsets, indices, offsets, per_sample_weights, pooling, argmax, optimizer, lr, eps):
    return None


def check_state(op: str, optimizer: str, weights: Tensor, state: Tensor) -> None:
    """The optimizer state each fused optimizer keeps: none (sgd), [R, D] (adagrad), [R] (row-wise)."""
    want = {"sgd": None, "adagrad": tuple(weights.shape), "rowwise_adagrad": (weights.shape[0],)}[optimizer]
    if want is not None and (tuple(state.shape) != want or state.dtype != torch.float32):
        raise ValueError(f"rankops.{op}: {optimizer} state must be float32 of shape {want}, got "
                         f"{state.dtype} {tuple(state.shape)}")
    if state.device != weights.device:
        raise ValueError(f"rankops.{op}: state is on {state.device} but weights are on {weights.device}")


class _FusedLookup(torch.autograd.Function):
    """Forward: the plain lookup. Backward: the optimizer step on the touched rows, in place; the
    weights get no .grad. ``anchor`` (FusedOptimizer.anchor) requires grad so that autograd runs
    the backward even though the weights themselves do not. Only tensors, strings and floats
    cross into the function, so that torch.compile traces it whole."""

    @staticmethod
    def forward(ctx, anchor, weights, state, table_offsets, indices, offsets, psw, mode: str, optimizer: str,
                lr: Tensor, eps: float):
        out, argmax = _batched(weights, table_offsets, indices, offsets, psw, mode, False)
        ctx.save_for_backward(table_offsets, indices, offsets, psw, argmax)
        # not saved: a saved tensor may not change before the backward, and lr may (a schedule);
        # the weights and state do change, by design: another fused lookup into the same buffer
        # (a table shared by two features) updates them in its own backward first.
        ctx.weights, ctx.state = weights, state
        ctx.lr, ctx.mode, ctx.optimizer, ctx.eps = lr, mode, optimizer, eps
        return out

    @staticmethod
    def backward(ctx, grad):
        table_offsets, indices, offsets, psw, argmax = ctx.saved_tensors
        weights, state = ctx.weights, ctx.state
        gp = None
        if psw is not None and ctx.needs_input_grad[6]:  # before the update: it reads the old rows
            gp = _dispatch.invoke(_batched.backward, grad, weights, table_offsets, indices, offsets, psw, ctx.mode,
                                  argmax, False, True)[1]
        _update(weights, state, grad, table_offsets, indices, offsets, psw, ctx.mode, argmax, ctx.optimizer, ctx.lr,
                ctx.eps)
        return None, None, None, None, None, None, gp, None, None, None, None


def fused_batched_embedding_bag(weights: Tensor, state: Tensor, table_offsets: Tensor, indices: Tensor,
                                offsets: Tensor, per_sample_weights: Tensor | None = None, mode: str = "sum", *,
                                optimizer: FusedOptimizer) -> Tensor:
    """``batched_embedding_bag`` whose backward updates ``weights`` (and ``state``) in place.

    The gradient of each touched row, ``g_r = sum_{lookups i of row r} scale_i * grad[bag_i]``
    (scale = per-sample weight, 1/len for mean, 1 for sum; for max each element goes to the lookup
    that won it), is reduced per unique row and the optimizer step applied to that row only:

        sgd:             w_r -= lr * g_r
        adagrad:         s_r += g_r^2 (elementwise, state [R, D]);  w_r -= lr * g_r / (sqrt(s_r) + eps)
        rowwise_adagrad: s_r += mean_d g_r^2 (state [R]);           w_r -= lr * g_r / (sqrt(s_r) + eps)

    which for sgd / adagrad equals torch.optim.SGD / Adagrad stepping on the dense gradient. No
    dense gradient is materialised. ``optimizer.lr`` is read at backward time (schedules work).
    Shapes as ``batched_embedding_bag``; ``weights`` must not require grad.
    """
    op = "fused_batched_embedding_bag"
    indices, offsets = _check_static(op, weights, table_offsets, indices, offsets, per_sample_weights, mode)
    if not isinstance(optimizer, FusedOptimizer):
        raise TypeError(f"rankops.{op}: optimizer must be a rankops FusedOptimizer, got {type(optimizer).__name__}")
    if weights.requires_grad:
        raise ValueError(f"rankops.{op}: weights must not require grad (the backward updates them in place)")
    check_state(op, optimizer.name, weights, state)
    return _FusedLookup.apply(optimizer.anchor, weights, state, table_offsets, indices, offsets, per_sample_weights,
                              mode, optimizer.name, optimizer.lr_tensor, optimizer.eps)


__all__ = ["FusedOptimizer", "MODES", "OPTIMIZERS", "batched_embedding_bag", "embedding_bag",
           "fused_batched_embedding_bag", "validate_values"]
