"""Per-feature embedding tables looked up in one rankops call, on their own Parameter objects.

Model zoos keep one ``nn.Embedding`` per feature. To serve all of them with one
``rankops.batched_embedding_bag`` call, StackedTables moves their rows into one ``[R, D]`` buffer and
makes each Parameter a view of its rows (``param.data = buffer[r0:r1]``): the Parameter objects stay
the same, so the user's optimizer, the state dict and the library's regulariser see nothing new. The
gradient flows back to each Parameter through ``stacked()``, an autograd alias of the buffer whose
backward splits the buffer's gradient into the tables' row blocks.

If something re-allocates a table (``model.to(...)``, ``load_state_dict`` with ``assign=True``),
``ensure()`` notices (the data pointers moved) and stacks the current values again.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

import rankops
from rankops.patch._core import Leave


def check_embedding(emb: nn.Module, name: str) -> None:
    """Leave unless ``emb`` is a plain nn.Embedding whose lookup is just a row read."""
    if type(emb) is not nn.Embedding:
        raise Leave(f"table {name!r} is a {type(emb).__qualname__}, not an nn.Embedding")
    for attr, plain in (("padding_idx", None), ("max_norm", None)):
        if getattr(emb, attr) is not plain:
            raise Leave(f"table {name!r} has {attr}={getattr(emb, attr)!r} (its gradient / renorm rule is not "
                        f"reproduced)")
    if emb.scale_grad_by_freq:
        raise Leave(f"table {name!r} has scale_grad_by_freq=True")
    if emb.sparse:
        raise Leave(f"table {name!r} has sparse=True (sparse gradients are not produced here)")


class _Alias(torch.autograd.Function):
    """The stacked buffer as a function of the tables: forward returns it without copying,
    backward hands each table its rows of the gradient, plus a pending whole-table L2 gradient
    (``_SumSquares``) added in place into the lookup's fresh dense gradient: one pass, no
    [rows, D] temporary (a fresh 16 MB tensor a step faults its pages in, 4 KiB at a time)."""

    @staticmethod
    def forward(ctx, buf: Tensor, rows: tuple[int, ...], stack: "StackedTables", *params: Tensor) -> Tensor:
        ctx.rows, ctx.stack = rows, stack
        ctx.save_for_backward(buf)
        return buf.detach()

    @staticmethod
    def backward(ctx, grad: Tensor):
        stack, task = ctx.stack, _graph_task()
        pending, stack.pending_l2 = stack.pending_l2, None
        stack.alias_task = task
        if pending is not None and pending[0] == task:  # (one left by a backward that failed: dropped)
            (buf,) = ctx.saved_tensors
            grad = grad.addcmul_(buf, pending[1])  # grad: the lookup backward's own new tensor
        return (None, None, None, *grad.split(ctx.rows, 0))


def _graph_task() -> int | None:
    """The running backward's id (torch >= 2.2); None where torch has no such call."""
    f = getattr(torch._C, "_current_graph_task_id", None)
    return f() if f is not None else None


class StackedTables:
    """Tables of one dim, dtype and device in one ``[R, D]`` buffer, each Parameter a view of its rows.

    ``base[i]`` is table i's first row; ``stacked()`` is the buffer, differentiable in every table.
    """

    def __init__(self, params: Sequence[nn.Parameter]):
        if len({(p.shape[1], p.dtype, p.device) for p in params}) != 1:
            raise ValueError("StackedTables: tables must share dim, dtype and device")
        self.params = list(params)
        self.rows = tuple(int(p.shape[0]) for p in params)
        base = [0]
        for r in self.rows:
            base.append(base[-1] + r)
        self.base_list = base[:-1]
        self.num_rows = base[-1]
        self.aliases: list = []  # the autograd nodes of the latest lookups (stacked())
        # the L2's gradient scale for this backward's _Alias (graph task, scale), and the last backward
        # in which an _Alias ran: the L2 folds into a lookup only if that lookup has not run yet
        self.pending_l2: tuple[int, Tensor] | None = None
        self.alias_task: int | None = None
        self._stack()

    def _stack(self) -> None:
        p0 = self.params[0]
        buf = torch.empty(self.num_rows, p0.shape[1], dtype=p0.dtype, device=p0.device)
        with torch.no_grad():
            for p, r0, r in zip(self.params, self.base_list, self.rows):
                buf[r0:r0 + r].copy_(p)
            for p, r0, r in zip(self.params, self.base_list, self.rows):
                p.data = buf[r0:r0 + r]
        self.buf = buf
        self._ptrs = [p.data_ptr() for p in self.params]
        self.device = buf.device
        self.base = torch.tensor(self.base_list, dtype=torch.int64, device=buf.device)
        self.sizes = torch.tensor(self.rows, dtype=torch.int64, device=buf.device)
        # table t = rows table_offsets[t]:table_offsets[t+1] (the op's own per-table layout)
        self.table_offsets = torch.tensor(self.base_list + [self.num_rows], dtype=torch.int64, device=buf.device)

    def ensure(self) -> None:
        """Re-stack when a table no longer lives in the buffer (moved, re-assigned, resized)."""
        if torch.compiler.is_compiling():
            return
        if any(p.data_ptr() != q or p.shape[0] != r for p, q, r in zip(self.params, self._ptrs, self.rows)):
            if any(p.shape[0] != r for p, r in zip(self.params, self.rows)):
                raise RuntimeError("rankops.patch: an embedding table changed its number of rows after patch(); "
                                   "call rankops.unpatch(model) and patch it again")
            self._stack()

    def stacked(self) -> Tensor:
        if torch.compiler.is_compiling():  # a copy the compiler can see through
            return torch.cat(self.params, 0)
        out = _Alias.apply(self.buf, self.rows, self, *self.params)
        if out.grad_fn is not None:  # this forward's lookups, for the L2's backward to find (bounded)
            self.aliases = [*self.aliases[-7:], out.grad_fn]
        return out

    def unstack(self) -> None:
        """Give every table its own storage again (values unchanged)."""
        with torch.no_grad():
            for p in self.params:
                p.data = p.data.clone()


def global_rows(stack: StackedTables, ids: Tensor, tables: Tensor, names: Sequence[str]) -> Tensor:
    """``ids [B, T]`` (feature t reads table ``tables[t]``) as row numbers of the stacked buffer, after
    the range check nn.Embedding would make (an IndexError naming the feature)."""
    tables = tables.to(stack.device)  # (a no-op unless the model moved since the plan was made)
    if not torch.compiler.is_compiling():
        bad = (ids < 0) | (ids >= stack.sizes[tables])
        if bool(bad.any()):
            b, t = (int(v) for v in torch.nonzero(bad)[0])
            raise IndexError(f"rankops.patch: feature {names[t]!r} has id {int(ids[b, t])} (sample {b}), outside "
                             f"its table of {stack.rows[int(tables[t])]} rows")
    return ids + stack.base[tables]


_OFFSETS: dict = {}


def _arange(n: int, step: int, device) -> Tensor:
    key = (n, step, str(device))
    t = _OFFSETS.get(key)
    if t is None:
        if len(_OFFSETS) > 64:
            _OFFSETS.clear()
        t = _OFFSETS[key] = torch.arange(0, n * step + 1, step, dtype=torch.int64, device=device)
    return t


def lookup(stack: StackedTables, rows: Tensor) -> Tensor:
    """``rows [B, T]`` of the stacked buffer -> ``[B, T, D]``: one bag per id, one rankops call."""
    B, T = rows.shape
    w = stack.stacked()
    to = _arange(1, stack.num_rows, stack.device)
    out = rankops.batched_embedding_bag(w, to, rows.reshape(-1), _arange(B * T, 1, stack.device))
    return out.view(B, T, w.shape[1])


def lookup_by_feature(stack: StackedTables, rows: Tensor) -> Tensor:
    """``rows [B, T]`` -> ``[T, B, D]``: the same lookups, feature-major, so that each feature's
    ``[B, D]`` is a contiguous block. (A model that concatenates per-feature ``[B, 1, D]`` pieces
    pays for strided ones: torch.cat of 26 strided [4096, 1, 16] views along dim 1 took 212 ms on
    the 2-core EPYC, of contiguous ones 0.6 ms.)"""
    B, T = rows.shape
    w = stack.stacked()
    to = _arange(1, stack.num_rows, stack.device)
    flat = rows.t().reshape(-1)  # (a view when rows is already feature-major in memory)
    out = rankops.batched_embedding_bag(w, to, flat, _arange(B * T, 1, stack.device))
    return out.view(T, B, w.shape[1])


class _Unstack(torch.autograd.Function):
    """``x [T, B, D]`` -> T pieces ``[B, 1, D]`` (contiguous views). Its backward copies the pieces'
    gradients into one ``[T, B, D]``: autograd's own (unbind's stack) meets them as strided slices of
    the model's concatenation and takes torch.cat's slow strided path (100+ ms at B=4096, T=26)."""

    @staticmethod
    def forward(ctx, x: Tensor):
        ctx.shape = x.shape
        return tuple(t.unsqueeze(1) for t in x.unbind(0))

    @staticmethod
    def backward(ctx, *grads):
        g = grads[0].new_empty(ctx.shape) if any(x is not None for x in grads) else None
        for t, gt in enumerate(grads):
            if gt is None:
                g[t].zero_()
            else:
                g[t].copy_(gt.squeeze(1))
        return g


def unstack(x: Tensor) -> list[Tensor]:
    """``[T, B, D]`` -> T contiguous ``[B, 1, D]`` pieces, differentiable without a strided stack."""
    if torch.compiler.is_compiling():
        return [t.unsqueeze(1) for t in x.unbind(0)]
    return list(_Unstack.apply(x))


def pooled_sum(stack: StackedTables, rows: Tensor) -> Tensor:
    """``rows [B, T]`` -> ``[B, D]``: sample b's T rows summed, one bag per sample."""
    B, T = rows.shape
    w = stack.stacked()
    to = _arange(1, stack.num_rows, stack.device)
    return rankops.batched_embedding_bag(w, to, rows.reshape(-1), _arange(B, T, stack.device)).view(B, w.shape[1])


class _SumSquares(torch.autograd.Function):
    """``scale * sum(buf^2)`` over the whole stacked buffer (one pass), differentiable in each table.

    Its gradient ``2 scale grad buf`` goes, where this backward also runs a lookup of the same tables
    (a model's loss plus its regulariser), into that lookup's dense gradient (``_Alias``): this node
    runs first (it was made after the forward's lookups, and the engine runs later nodes first among
    those ready), leaves the scale on the stack and returns nothing. Otherwise (the L2 alone) its own
    ``[rows, D]`` product, as before."""

    @staticmethod
    def forward(ctx, buf: Tensor, rows: tuple[int, ...], scale: float, stack: "StackedTables",
                *params: Tensor) -> Tensor:
        ctx.rows, ctx.scale, ctx.stack = rows, scale, stack
        ctx.save_for_backward(buf)
        flat = buf.reshape(-1)
        return (torch.dot(flat, flat) * scale).reshape(1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (buf,) = ctx.saved_tensors
        c = (2.0 * ctx.scale) * grad.reshape(())
        stack, task = ctx.stack, _graph_task()
        if task is not None and stack.alias_task != task and \
                any(torch._C._will_engine_execute_node(n) for n in stack.aliases):
            if stack.pending_l2 is not None and stack.pending_l2[0] == task:  # two L2 terms on one stack
                c = c + stack.pending_l2[1]
            stack.pending_l2 = (task, c)
            return (None,) * (4 + len(ctx.rows))
        return (None, None, None, None, *(buf * c).split(ctx.rows, 0))


def l2(stack: StackedTables, scale: float) -> Tensor:
    """``[scale * sum of every table's squared weights]`` (shape [1])."""
    stack.ensure()
    if torch.compiler.is_compiling():
        return sum(torch.sum(scale * torch.square(p)) for p in stack.params).reshape(1)
    return _SumSquares.apply(stack.buf, stack.rows, float(scale), stack, *stack.params)
