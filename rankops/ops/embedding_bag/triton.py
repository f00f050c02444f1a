"""Triton kernels for the embedding-bag family (layout and codes as in reference.py).

Forward: one program per (bag, block of D); it walks its bag's lookups BLOCK_L at a time,
gathering a [BLOCK_L, BLOCK_D] tile of rows and reducing it in fp32.

Backward and fused update: the lookups are sorted by global row (torch.sort, stable), which makes
one segment per unique row; one program per unique row reduces its segment in position order
(deterministic: no atomics) and then writes the dense gradient row or applies SGD / Adagrad /
row-wise Adagrad to the row in place. No dense gradient is materialised for the update.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rankops.ops.embedding_bag.reference import MAX, MEAN

# Row functors of the segment kernel.
WRITE_GRAD, SGD, ADAGRAD, ROWWISE = range(4)


@triton.jit
def _forward_kernel(w_ptr, toff_ptr, idx_ptr, off_ptr, psw_ptr, out_ptr, am_ptr, T, B, D,
                    MODE: tl.constexpr, HAS_PSW: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    k = tl.program_id(0).to(tl.int64)  # bag, table-major
    dblk = tl.program_id(1)
    t = k // B
    b = k % B
    start = tl.load(off_ptr + k).to(tl.int64)
    end = tl.load(off_ptr + k + 1).to(tl.int64)
    base = tl.load(toff_ptr + t)
    d = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    lanes = tl.arange(0, BLOCK_L)
    if MODE == 2:
        acc = tl.full((BLOCK_D,), float("-inf"), tl.float32)
        am = tl.full((BLOCK_D,), -1, tl.int64)
    else:
        acc = tl.zeros((BLOCK_D,), tl.float32)
    for i in range(start, end, BLOCK_L):
        pos = i + lanes
        lmask = pos < end
        rows = tl.load(idx_ptr + pos, mask=lmask, other=0).to(tl.int64) + base
        m2 = lmask[:, None] & dmask[None, :]
        v = tl.load(w_ptr + rows[:, None] * D + d[None, :], mask=m2, other=0.0).to(tl.float32)
        if MODE == 2:
            v = tl.where(m2, v, float("-inf"))
            tmax = tl.max(v, 0)
            # first position reaching the tile max; the running max changes only on a strict
            # increase, so the earliest lookup wins ties, as in the reference
            cand = tl.where(v == tmax[None, :], pos[:, None], end + BLOCK_L)
            tpos = tl.min(cand, 0)
            better = tmax > acc
            acc = tl.where(better, tmax, acc)
            am = tl.where(better, tpos, am)
        else:
            if HAS_PSW:
                s = tl.load(psw_ptr + pos, mask=lmask, other=0.0).to(tl.float32)
                v = v * s[:, None]
            acc += tl.sum(v, 0)
    n = end - start
    if MODE == 1:
        acc = acc / tl.maximum(n, 1).to(tl.float32)
    if MODE == 2:
        acc = tl.where(n > 0, acc, 0.0)
        tl.store(am_ptr + (b * T + t) * D + d, am, mask=dmask)
    tl.store(out_ptr + (b * T + t) * D + d, acc.to(out_ptr.dtype.element_ty), mask=dmask)


@triton.jit
def _segment_kernel(grad_ptr, perm_ptr, bag_ptr, scale_ptr, am_ptr, seg_ptr, urow_ptr, w_ptr, state_ptr, gw_ptr,
                    T, B, D, lr, eps,
                    MODE: tl.constexpr, OP: tl.constexpr, HAS_SCALE: tl.constexpr, BLOCK_L: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    u = tl.program_id(0).to(tl.int64)  # unique row
    j0 = tl.load(seg_ptr + u)
    j1 = tl.load(seg_ptr + u + 1)
    row = tl.load(urow_ptr + u)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    lanes = tl.arange(0, BLOCK_L)
    g = tl.zeros((BLOCK_D,), tl.float32)
    for j in range(j0, j1, BLOCK_L):
        jj = j + lanes
        lmask = jj < j1
        pos = tl.load(perm_ptr + jj, mask=lmask, other=0)
        k = tl.load(bag_ptr + pos, mask=lmask, other=0)
        out_row = (k % B) * T + k // B
        m2 = lmask[:, None] & dmask[None, :]
        gv = tl.load(grad_ptr + out_row[:, None] * D + d[None, :], mask=m2, other=0.0).to(tl.float32)
        if MODE == 2:
            win = tl.load(am_ptr + out_row[:, None] * D + d[None, :], mask=m2, other=-1)
            gv = tl.where(win == pos[:, None], gv, 0.0)
        elif HAS_SCALE:
            s = tl.load(scale_ptr + pos, mask=lmask, other=0.0)
            gv = gv * s[:, None]
        g += tl.sum(gv, 0)
    ptr = row * D + d
    if OP == 0:
        tl.store(gw_ptr + ptr, g.to(gw_ptr.dtype.element_ty), mask=dmask)
    else:
        w = tl.load(w_ptr + ptr, mask=dmask, other=0.0).to(tl.float32)
        if OP == 1:
            w = w - lr * g
        elif OP == 2:
            s = tl.load(state_ptr + ptr, mask=dmask, other=0.0) + g * g
            tl.store(state_ptr + ptr, s, mask=dmask)
            w = w - lr * g / (tl.sqrt(s) + eps)
        else:
            s = tl.load(state_ptr + row) + tl.sum(g * g, 0) / D
            tl.store(state_ptr + row, s)
            w = w - (lr / (tl.sqrt(s) + eps)) * g
        tl.store(w_ptr + ptr, w.to(w_ptr.dtype.element_ty), mask=dmask)


@triton.jit
def _psw_grad_kernel(grad_ptr, w_ptr, toff_ptr, idx_ptr, off_ptr, gp_ptr, T, B, D,
                     BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    k = tl.program_id(0).to(tl.int64)
    t = k // B
    b = k % B
    start = tl.load(off_ptr + k).to(tl.int64)
    end = tl.load(off_ptr + k + 1).to(tl.int64)
    base = tl.load(toff_ptr + t)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    gr = tl.load(grad_ptr + (b * T + t) * D + d, mask=dmask, other=0.0).to(tl.float32)
    lanes = tl.arange(0, BLOCK_L)
    for i in range(start, end, BLOCK_L):
        pos = i + lanes
        lmask = pos < end
        rows = tl.load(idx_ptr + pos, mask=lmask, other=0).to(tl.int64) + base
        v = tl.load(w_ptr + rows[:, None] * D + d[None, :], mask=lmask[:, None] & dmask[None, :], other=0.0)
        dot = tl.sum(v.to(tl.float32) * gr[None, :], 1)
        tl.store(gp_ptr + pos, dot.to(gp_ptr.dtype.element_ty), mask=lmask)


def _blocks(D: int) -> tuple[int, int]:
    block_d = triton.next_power_of_2(max(D, 1))
    # keep a gathered tile near 4K elements so large D does not blow the register file
    block_l = max(1, min(16, 4096 // block_d))
    return block_l, block_d


def forward(weights, table_offsets, indices, offsets, psw, mode: int):
    T = table_offsets.numel() - 1
    B = (offsets.numel() - 1) // T
    D = weights.shape[1]
    out = torch.empty(B, T, D, dtype=weights.dtype, device=weights.device)
    argmax = torch.empty((B, T, D) if mode == MAX else (0,), dtype=torch.int64, device=weights.device)
    if out.numel() == 0:
        return out, argmax
    block_l, block_d = _blocks(D)
    block_d = min(block_d, 128)
    grid = (T * B, triton.cdiv(D, block_d))
    _forward_kernel[grid](weights, table_offsets.long(), indices, offsets, psw if psw is not None else weights,
                          out, argmax if mode == MAX else out, T, B, D, MODE=mode, HAS_PSW=psw is not None,
                          BLOCK_L=block_l, BLOCK_D=block_d)
    return out, argmax


def _segments(table_offsets, indices, offsets, T, B):
    """(perm [nnz] positions sorted by (row, position), bag of each position, segment offsets
    [U+1] into perm, unique rows [U])."""
    off = offsets.long()
    bag = torch.repeat_interleave(torch.arange(T * B, device=off.device), off[1:] - off[:-1])
    rows = table_offsets.long()[bag // B] + indices.long()
    srows, perm = torch.sort(rows, stable=True)
    urows, counts = torch.unique_consecutive(srows, return_counts=True)
    seg = torch.zeros(urows.numel() + 1, dtype=torch.int64, device=off.device)
    seg[1:] = torch.cumsum(counts, 0)
    return perm, bag, seg, urows


def _scale(psw, mode, offsets, bag):
    if psw is not None:
        return psw.float()
    if mode == MEAN:
        off = offsets.long()
        return 1.0 / (off[1:] - off[:-1])[bag].float()
    return None


def _segment_warps(block_d: int) -> int:
    # 4 warps at D=128 spilled in the Adagrad update (sm_90a, scripts/gpu_report.py)
    return 8 if block_d >= 128 else 4


def _run_segments(op, weights, state, gw, grad, table_offsets, indices, offsets, psw, mode, argmax, lr, eps):
    T = table_offsets.numel() - 1
    B = (offsets.numel() - 1) // T
    D = weights.shape[1]
    if indices.numel() == 0 or D == 0:
        return
    perm, bag, seg, urows = _segments(table_offsets, indices, offsets, T, B)
    scale = _scale(psw, mode, offsets, bag)
    block_l, block_d = _blocks(D)
    dummy = weights
    _segment_kernel[(urows.numel(),)](
        grad, perm, bag, scale if scale is not None else grad, argmax if mode == MAX else perm, seg, urows,
        weights, state if state is not None and state.numel() else dummy, gw if gw is not None else dummy,
        T, B, D, float(lr), float(eps),
        MODE=mode, OP=op, HAS_SCALE=scale is not None, BLOCK_L=block_l, BLOCK_D=block_d,
        num_warps=_segment_warps(block_d))


def backward(grad, weights, table_offsets, indices, offsets, psw, mode: int, argmax, need_weight_grad: bool,
             need_psw_grad: bool):
    grad = grad.to(weights.dtype).contiguous()
    T = table_offsets.numel() - 1
    B = (offsets.numel() - 1) // T
    D = weights.shape[1]
    gw = weights.new_empty(0)
    if need_weight_grad:
        gw = torch.zeros_like(weights)
        _run_segments(WRITE_GRAD, weights, None, gw, grad, table_offsets, indices, offsets, psw, mode, argmax, 0.0,
                      0.0)
    gp = weights.new_empty(0)
    if need_psw_grad and psw is not None:
        gp = torch.empty_like(psw)
        if indices.numel() and T * B:
            block_l, block_d = _blocks(D)
            _psw_grad_kernel[(T * B,)](grad, weights, table_offsets.long(), indices, offsets, gp, T, B, D,
                                       BLOCK_L=block_l, BLOCK_D=block_d)
    return gw, gp


def update(weights, table_offsets, indices, offsets, state, grad, psw, mode: int, argmax, optimizer: int, lr: float,
           eps: float):
    _run_segments(SGD + optimizer, weights, state, None, grad.to(weights.dtype).contiguous(), table_offsets, indices,
                  offsets, psw, mode, argmax, lr, eps)


# ---------------------------------------------------------------------------------------------
# ahead-of-time specs for scripts/gpu_report.py: the constexprs the launchers above pick at the
# benchmark's dims (bench/embedding_bag.py), for every dtype

BENCH_DIMS = (16, 64, 128)


def aot_specs() -> list[dict]:
    from rankops.ops import _aot

    specs = []
    ints = [("T", "i32", 26), ("B", "i32", 16384)]
    for dtype, t in _aot.SIG.items():
        w = "*" + t
        for D in BENCH_DIMS:
            block_l, block_d = _blocks(D)
            dims = ints + [("D", "i32", D)]
            fwd_d = min(block_d, 128)
            for mode, has_psw in ((0, False), (0, True), (1, False), (MAX, False)):
                args = [("w_ptr", w, None), ("toff_ptr", "*i64", None), ("idx_ptr", "*i64", None),
                        ("off_ptr", "*i64", None), ("psw_ptr", w, None), ("out_ptr", w, None),
                        ("am_ptr", "*i64" if mode == MAX else w, None)] + dims
                specs.append(_aot.spec(_forward_kernel, f"{t} D={D} mode={mode} psw={int(has_psw)}", args,
                                       dict(MODE=mode, HAS_PSW=has_psw, BLOCK_L=block_l, BLOCK_D=fwd_d)))
            for op, mode, has_scale in ((WRITE_GRAD, 0, False), (WRITE_GRAD, MAX, False), (SGD, 0, True),
                                        (ADAGRAD, 0, False), (ROWWISE, 0, False), (ROWWISE, MEAN, True)):
                args = [("grad_ptr", w, None), ("perm_ptr", "*i64", None), ("bag_ptr", "*i64", None),
                        ("scale_ptr", "*fp32" if has_scale else w, None),
                        ("am_ptr", "*i64", None), ("seg_ptr", "*i64", None), ("urow_ptr", "*i64", None),
                        ("w_ptr", w, None), ("state_ptr", "*fp32" if op in (ADAGRAD, ROWWISE) else w, None),
                        ("gw_ptr", w, None)] + dims + [("lr", "fp32", 1), ("eps", "fp32", 1)]
                specs.append(_aot.spec(_segment_kernel, f"{t} D={D} op={op} mode={mode} scale={int(has_scale)}",
                                       args, dict(MODE=mode, OP=op, HAS_SCALE=has_scale, BLOCK_L=block_l,
                                                  BLOCK_D=block_d), num_warps=_segment_warps(block_d)))
            args = [("grad_ptr", w, None), ("w_ptr", w, None), ("toff_ptr", "*i64", None),
                    ("idx_ptr", "*i64", None), ("off_ptr", "*i64", None), ("gp_ptr", w, None)] + dims
            specs.append(_aot.spec(_psw_grad_kernel, f"{t} D={D}", args, dict(BLOCK_L=block_l, BLOCK_D=block_d)))
    return specs


__all__ = ["aot_specs", "backward", "forward", "update"]
