"""Triton kernels for target attention (padded and jagged), forward and backward.

Forward (flash-decoding): a program owns (query block, key split, sample*head). It loads its query
block once and streams the split's keys and values in BLOCK_L tiles with the online softmax, so the
Q candidates of a user share one pass over its sequence: with Q <= BLOCK_Q (64) the keys are read
from memory once per user; beyond that the query blocks of one (sample, head, split) are adjacent in
the grid (axis 0 varies fastest) and re-read the same keys from L2, not from HBM. When B*H*query
blocks cannot fill the GPU, the key axis is split (split-KV) and a combine kernel merges the partial
results by their log-sum-exp; the cost stays linear in L.

Backward (FlashAttention-2 order): delta = rowsum(dO * O) (torch), then one kernel per key block
that recomputes P = exp(scale*S - lse) for all queries and accumulates dK, dV in registers, and one
kernel per query block (split like the forward) that accumulates dQ. No atomics.

Softmax statistics are fp32; exponentials use exp2 with log2(e) folded into the scale. On a GPU the
matrix products take fp16/bf16 operands with fp32 accumulation; under TRITON_INTERPRET=1 everything
is computed in fp32 (the interpreter's bf16 dot is unreliable). Q = 1 (DIN-style single target)
uses broadcast-and-reduce instead of tl.dot, which needs 16-row operands.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from rankops.backend import triton_interpreting

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _mm_nt(a, b, USE_DOT: tl.constexpr):
    """a[M, K] @ b[N, K]^T -> [M, N] in fp32."""
    if USE_DOT:
        if a.dtype == tl.float32:  # fp32 inputs: full-precision products, not TF32
            return tl.dot(a, tl.trans(b), input_precision="ieee")
        else:
            return tl.dot(a, tl.trans(b))
    else:
        return tl.sum(a[:, None, :].to(tl.float32) * b[None, :, :].to(tl.float32), axis=2)


@triton.jit
def _mm_nn(a, b, USE_DOT: tl.constexpr):
    """a[M, K] @ b[K, N] -> [M, N] in fp32."""
    if USE_DOT:
        if a.dtype == tl.float32:
            return tl.dot(a, b, input_precision="ieee")
        else:
            return tl.dot(a, b)
    else:
        return tl.sum(a[:, :, None].to(tl.float32) * b[None, :, :].to(tl.float32), axis=1)


@triton.jit
def _mm_tn(a, b, USE_DOT: tl.constexpr):
    """a[K, M]^T @ b[K, N] -> [M, N] in fp32."""
    if USE_DOT:
        if a.dtype == tl.float32:
            return tl.dot(tl.trans(a), b, input_precision="ieee")
        else:
            return tl.dot(tl.trans(a), b)
    else:
        return tl.sum(a[:, :, None].to(tl.float32) * b[:, None, :].to(tl.float32), axis=0)


@triton.jit
def _seq(Seq, b, h, stride_kb, stride_kh, stride_kl, JAGGED: tl.constexpr):
    """(element offset of key 0 of (b, h), number of keys)."""
    if JAGGED:
        start = tl.load(Seq + b)
        length = tl.load(Seq + b + 1) - start
        return start * stride_kl + h * stride_kh, length
    else:
        return b * stride_kb + h * stride_kh, tl.load(Seq + b)


@triton.jit
def _fwd_kernel(
    Q, K, V, Out, Lse, Seq,
    qk_scale,  # scale * log2(e)
    H, NQ, split_len,
    stride_kb, stride_kh, stride_kl,
    D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    JAGGED: tl.constexpr, SPLIT: tl.constexpr, USE_DOT: tl.constexpr, F32: tl.constexpr,
):
    pid_q = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    bh = tl.program_id(2).to(tl.int64)
    b, h = bh // H, bh % H
    kbase, length = _seq(Seq, b, h, stride_kb, stride_kh, stride_kl, JAGGED)
    lo = pid_s * split_len
    hi = tl.minimum(lo + split_len, length)

    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    qmask = offs_q < NQ
    dmask = offs_d < D
    rows = bh * NQ + offs_q
    q = tl.load(Q + rows[:, None] * D + offs_d[None, :], mask=qmask[:, None] & dmask[None, :], other=0.0)
    if F32:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_Q], tl.float32)
    acc = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_L):
        offs_l = start + tl.arange(0, BLOCK_L)
        lmask = offs_l < hi
        kv_off = kbase + offs_l[:, None] * stride_kl + offs_d[None, :]
        kvmask = lmask[:, None] & dmask[None, :]
        k = tl.load(K + kv_off, mask=kvmask, other=0.0)
        v = tl.load(V + kv_off, mask=kvmask, other=0.0)
        if F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = _mm_nt(q, k, USE_DOT) * qk_scale
        s = tl.where(lmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile holds at least one valid key
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _mm_nn(p.to(v.dtype), v, USE_DOT)
        m_i = m_new

    nonempty = l_i > 0.0
    o = tl.where(nonempty[:, None], acc / tl.where(nonempty, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(nonempty, (m_i + tl.math.log2(tl.where(nonempty, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    if SPLIT:  # partial results in fp32, [splits, B*H, NQ, (D)]
        prow = pid_s * tl.num_programs(2) * NQ + rows
        tl.store(Out + prow[:, None] * D + offs_d[None, :], o, mask=qmask[:, None] & dmask[None, :])
        tl.store(Lse + prow, lse, mask=qmask)
    else:
        tl.store(Out + rows[:, None] * D + offs_d[None, :], o.to(Out.dtype.element_ty),
                 mask=qmask[:, None] & dmask[None, :])
        tl.store(Lse + rows, lse, mask=qmask)


@triton.jit
def _combine_kernel(
    PartO, PartLse, Out, Lse, BH, NQ, num_splits,
    D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Merge the splits' (O_s, lse_s): O = sum_s exp(lse_s - lse) O_s, lse = log sum_s exp(lse_s)."""
    pid_q = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    qmask = offs_q < NQ
    omask = qmask[:, None] & (offs_d < D)[None, :]
    rows = bh * NQ + offs_q
    m = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_Q], tl.float32)
    acc = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
    for s in range(0, num_splits):
        prow = s * BH * NQ + rows
        lse_s = tl.load(PartLse + prow, mask=qmask, other=float("-inf"))
        o_s = tl.load(PartO + prow[:, None] * D + offs_d[None, :], mask=omask, other=0.0)
        m_new = tl.maximum(m, lse_s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all splits empty so far
        alpha = tl.math.exp2((m - m_safe) * 1.4426950408889634)
        w = tl.math.exp2((lse_s - m_safe) * 1.4426950408889634)
        l = l * alpha + w
        acc = acc * alpha[:, None] + w[:, None] * o_s
        m = m_new
    nonempty = l > 0.0
    o = tl.where(nonempty[:, None], acc / tl.where(nonempty, l, 1.0)[:, None], 0.0)
    lse = tl.where(nonempty, m + tl.log(tl.where(nonempty, l, 1.0)), float("-inf"))
    tl.store(Out + rows[:, None] * D + offs_d[None, :], o.to(Out.dtype.element_ty), mask=omask)
    tl.store(Lse + rows, lse, mask=qmask)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, dO, Lse, Delta, dK, dV, Seq,
    scale, H, NQ,
    stride_kb, stride_kh, stride_kl,
    D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    JAGGED: tl.constexpr, USE_DOT: tl.constexpr, F32: tl.constexpr,
):
    """dV = P^T dO and dK = scale * dS^T Q for one key tile, over all queries of its (b, h)."""
    pid_l = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    kbase, length = _seq(Seq, b, h, stride_kb, stride_kh, stride_kl, JAGGED)
    if pid_l * BLOCK_L >= length:
        return  # padded rows: dk, dv were allocated zeroed
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.arange(0, BLOCK_D)
    lmask = offs_l < length
    dmask = offs_d < D
    kv_off = kbase + offs_l[:, None] * stride_kl + offs_d[None, :]
    kvmask = lmask[:, None] & dmask[None, :]
    k = tl.load(K + kv_off, mask=kvmask, other=0.0)
    v = tl.load(V + kv_off, mask=kvmask, other=0.0)
    if F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_L, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_L, BLOCK_D], tl.float32)
    qk_scale = scale * 1.4426950408889634
    for q0 in range(0, NQ, BLOCK_Q):
        offs_q = q0 + tl.arange(0, BLOCK_Q)
        qmask = offs_q < NQ
        rows = bh * NQ + offs_q
        qdmask = qmask[:, None] & dmask[None, :]
        q = tl.load(Q + rows[:, None] * D + offs_d[None, :], mask=qdmask, other=0.0)
        do = tl.load(dO + rows[:, None] * D + offs_d[None, :], mask=qdmask, other=0.0)
        if F32:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(Lse + rows, mask=qmask, other=0.0) * 1.4426950408889634
        delta = tl.load(Delta + rows, mask=qmask, other=0.0)
        s = _mm_nt(q, k, USE_DOT) * qk_scale
        p = tl.math.exp2(s - lse[:, None])
        p = tl.where(qmask[:, None] & lmask[None, :], p, 0.0)
        dv += _mm_tn(p.to(do.dtype), do, USE_DOT)
        dp = _mm_nt(do, v, USE_DOT)
        ds = p * (dp - delta[:, None])
        dk += _mm_tn(ds.to(q.dtype), q, USE_DOT)
    tl.store(dK + kv_off, (dk * scale).to(dK.dtype.element_ty), mask=kvmask)
    tl.store(dV + kv_off, dv.to(dV.dtype.element_ty), mask=kvmask)


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, dO, Lse, Delta, dQ, Seq,
    scale, H, NQ, split_len,
    stride_kb, stride_kh, stride_kl,
    D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    JAGGED: tl.constexpr, SPLIT: tl.constexpr, USE_DOT: tl.constexpr, F32: tl.constexpr,
):
    """dQ = scale * dS K for one query block over one key split (partial sums when SPLIT)."""
    pid_q = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    bh = tl.program_id(2).to(tl.int64)
    b, h = bh // H, bh % H
    kbase, length = _seq(Seq, b, h, stride_kb, stride_kh, stride_kl, JAGGED)
    lo = pid_s * split_len
    hi = tl.minimum(lo + split_len, length)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    qmask = offs_q < NQ
    dmask = offs_d < D
    rows = bh * NQ + offs_q
    qdmask = qmask[:, None] & dmask[None, :]
    q = tl.load(Q + rows[:, None] * D + offs_d[None, :], mask=qdmask, other=0.0)
    do = tl.load(dO + rows[:, None] * D + offs_d[None, :], mask=qdmask, other=0.0)
    if F32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(Lse + rows, mask=qmask, other=0.0) * 1.4426950408889634
    delta = tl.load(Delta + rows, mask=qmask, other=0.0)
    qk_scale = scale * 1.4426950408889634
    dq = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_L):
        offs_l = start + tl.arange(0, BLOCK_L)
        lmask = offs_l < hi
        kv_off = kbase + offs_l[:, None] * stride_kl + offs_d[None, :]
        kvmask = lmask[:, None] & dmask[None, :]
        k = tl.load(K + kv_off, mask=kvmask, other=0.0)
        v = tl.load(V + kv_off, mask=kvmask, other=0.0)
        if F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = _mm_nt(q, k, USE_DOT) * qk_scale
        p = tl.where(lmask[None, :], tl.math.exp2(s - lse[:, None]), 0.0)
        dp = _mm_nt(do, v, USE_DOT)
        ds = p * (dp - delta[:, None])
        dq += _mm_nn(ds.to(k.dtype), k, USE_DOT)
    dq = dq * scale
    if SPLIT:
        prow = pid_s * tl.num_programs(2) * NQ + rows
        tl.store(dQ + prow[:, None] * D + offs_d[None, :], dq, mask=qdmask)
    else:
        tl.store(dQ + rows[:, None] * D + offs_d[None, :], dq.to(dQ.dtype.element_ty), mask=qdmask)


# ---------------------------------------------------------------------------------------------
# launch planning


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _target_programs(device: torch.device) -> int:
    if device.type != "cuda":  # interpreter: pretend to be a small GPU so tests reach the split path
        return 8
    return 2 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


class _Plan:
    """Block sizes, key splits and flags of one call. ``interp``: running under the interpreter;
    ``target``: programs that fill the device (2 per SM). Plain arguments, so the sm_90 compile
    check (tests) builds the same plans without a GPU."""

    def __init__(self, interp: bool, target: int, BH: int, NQ: int, d: int, max_len: int, dtype: torch.dtype):
        self.interp = interp
        self.BLOCK_D = max(16, triton.next_power_of_2(d))
        # Q = 1: broadcast-reduce (tl.dot needs 16 rows); otherwise tensor-core tiles of up to 64 queries.
        self.BLOCK_Q = 1 if NQ == 1 else min(64, max(16, triton.next_power_of_2(NQ)))
        self.BLOCK_L = 64 if self.BLOCK_D <= 64 else 32
        self.F32 = self.interp or dtype == torch.float32
        if dtype == torch.float32 and not self.interp:
            # full-precision fp32 products run on FMA units and hold more in registers: halve the
            # tiles (ptxas -v, sm_90: no spills at d = 64)
            self.BLOCK_Q = min(self.BLOCK_Q, 32)
            self.BLOCK_L = 32
        self.USE_DOT = self.BLOCK_Q >= 16
        # the dK/dV kernel holds two [BLOCK_L, d] accumulators besides its query tiles
        self.BLOCK_Q_KV = min(self.BLOCK_Q, 16) if (dtype == torch.float32 and not self.interp) else self.BLOCK_Q
        # 64x64 fp32 tiles (d = 64) need 8 warps to stay in registers (ptxas -v, sm_90: no spills)
        self.num_warps = 8 if self.BLOCK_D >= 64 else 4
        q_blocks = triton.cdiv(NQ, self.BLOCK_Q)
        programs = BH * q_blocks
        min_split = 2 * self.BLOCK_L if self.interp else 8 * self.BLOCK_L  # keep each split's loop long enough
        splits = 1
        if programs < target and max_len > min_split:
            splits = min(triton.cdiv(target, max(programs, 1)), triton.cdiv(max_len, min_split))
        split_len = triton.cdiv(triton.cdiv(max(max_len, 1), splits), self.BLOCK_L) * self.BLOCK_L
        self.splits = triton.cdiv(max(max_len, 1), split_len)
        self.split_len = split_len
        self.q_blocks = q_blocks


def _plan(device, BH, NQ, d, max_len, dtype) -> _Plan:
    return _Plan(device.type != "cuda", _target_programs(device), BH, NQ, d, max_len, dtype)


def _strides(k: torch.Tensor, jagged: bool):
    if jagged:  # [S, H, d]
        return 0, k.stride(1), k.stride(0)
    return k.stride(0), k.stride(1), k.stride(2)  # [B, H, L, d]


def _forward(q, k, v, seq, scale, jagged, max_len):
    B, H, NQ, d = q.shape
    BH = B * H
    out = torch.empty_like(q)
    lse = torch.empty(B, H, NQ, device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        lse.fill_(float("-inf"))
        return out, lse
    plan = _plan(q.device, BH, NQ, d, max_len, q.dtype)
    split = plan.splits > 1
    if split:
        part_o = torch.empty(plan.splits, BH, NQ, d, device=q.device, dtype=torch.float32)
        part_lse = torch.empty(plan.splits, BH, NQ, device=q.device, dtype=torch.float32)
    else:
        part_o, part_lse = out, lse
    sb, sh, sl = _strides(k, jagged)
    _fwd_kernel[(plan.q_blocks, plan.splits, BH)](
        q, k, v, part_o, part_lse, seq, scale * LOG2E, H, NQ, plan.split_len, sb, sh, sl,
        D=d, BLOCK_Q=plan.BLOCK_Q, BLOCK_L=plan.BLOCK_L, BLOCK_D=plan.BLOCK_D,
        JAGGED=jagged, SPLIT=split, USE_DOT=plan.USE_DOT, F32=plan.F32, num_warps=plan.num_warps,
    )
    if split:
        cq = min(64, triton.next_power_of_2(NQ))
        _combine_kernel[(triton.cdiv(NQ, cq), BH)](
            part_o, part_lse, out, lse, BH, NQ, plan.splits, D=d, BLOCK_Q=cq, BLOCK_D=plan.BLOCK_D,
        )
    return out, lse


def _backward(grad, q, k, v, seq, out, lse, scale, jagged, max_len):
    B, H, NQ, d = q.shape
    BH = B * H
    dk = torch.zeros_like(k)  # rows past a sample's length are never visited
    dv = torch.zeros_like(v)
    dq = torch.empty_like(q)
    if q.numel() == 0 or max_len == 0:
        return dq.zero_(), dk, dv
    delta = (grad.float() * out.float()).sum(-1).contiguous()  # D_i = dO_i . O_i
    plan = _plan(q.device, BH, NQ, d, max_len, q.dtype)
    sb, sh, sl = _strides(k, jagged)
    common = dict(BLOCK_L=plan.BLOCK_L, BLOCK_D=plan.BLOCK_D, JAGGED=jagged, USE_DOT=plan.USE_DOT, F32=plan.F32,
                  num_warps=plan.num_warps)
    _bwd_dkdv_kernel[(triton.cdiv(max_len, plan.BLOCK_L), BH)](
        q, k, v, grad, lse, delta, dk, dv, seq, scale, H, NQ, sb, sh, sl, D=d, BLOCK_Q=plan.BLOCK_Q_KV, **common,
    )
    split = plan.splits > 1
    dq_part = torch.empty(plan.splits, BH, NQ, d, device=q.device, dtype=torch.float32) if split else dq
    _bwd_dq_kernel[(plan.q_blocks, plan.splits, BH)](
        q, k, v, grad, lse, delta, dq_part, seq, scale, H, NQ, plan.split_len, sb, sh, sl,
        D=d, BLOCK_Q=plan.BLOCK_Q, SPLIT=split, **common,
    )
    if split:
        dq = dq_part.sum(0).view(B, H, NQ, d).to(q.dtype)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------
# entry points (same signatures as reference.py)


def target_attention(q, k, v, lengths, scale):
    return _forward(q, k, v, lengths, scale, False, k.shape[2])


def target_attention_backward(grad, q, k, v, lengths, out, lse, scale):
    return _backward(grad, q, k, v, lengths, out, lse, scale, False, k.shape[2])


def _max_len(offsets: torch.Tensor) -> int:
    return int((offsets[1:] - offsets[:-1]).max()) if offsets.numel() > 1 else 0


def jagged_target_attention(q, k, v, offsets, scale):
    return _forward(q, k, v, offsets, scale, True, _max_len(offsets))


def jagged_target_attention_backward(grad, q, k, v, offsets, out, lse, scale):
    return _backward(grad, q, k, v, offsets, out, lse, scale, True, _max_len(offsets))


# ---------------------------------------------------------------------------------------------
# ahead-of-time compile check (no GPU needed)


def sm90_resource_usage(dtype: torch.dtype, d: int, NQ: int, jagged: bool = False, split: bool = False) -> dict:
    """Compile the forward and backward kernels of one plan for sm_90a and return
    ``{kernel: ptxas -v line}`` (registers, stack frame, spill bytes). Needs Triton's bundled ptxas,
    not a GPU; run it without TRITON_INTERPRET (the interpreter replaces the jitted functions)."""
    import os
    import re
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    plan = _Plan(False, 264, 1, NQ, d, 10_000, dtype)
    t = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    head = {"Q": f"*{t}", "K": f"*{t}", "V": f"*{t}"}
    strides = {"stride_kb": "i64", "stride_kh": "i64", "stride_kl": "i64"}
    flags = {"D": d, "BLOCK_L": plan.BLOCK_L, "BLOCK_D": plan.BLOCK_D, "JAGGED": jagged, "USE_DOT": plan.USE_DOT,
             "F32": plan.F32}
    kernels = {
        "fwd": (_fwd_kernel, {**head, "Out": "*fp32" if split else f"*{t}", "Lse": "*fp32", "Seq": "*i64",
                              "qk_scale": "fp32", "H": "i32", "NQ": "i32", "split_len": "i32", **strides},
                {**flags, "BLOCK_Q": plan.BLOCK_Q, "SPLIT": split}),
        "dkdv": (_bwd_dkdv_kernel, {**head, "dO": f"*{t}", "Lse": "*fp32", "Delta": "*fp32", "dK": f"*{t}",
                                    "dV": f"*{t}", "Seq": "*i64", "scale": "fp32", "H": "i32", "NQ": "i32",
                                    **strides}, {**flags, "BLOCK_Q": plan.BLOCK_Q_KV}),
        "dq": (_bwd_dq_kernel, {**head, "dO": f"*{t}", "Lse": "*fp32", "Delta": "*fp32",
                                "dQ": "*fp32" if split else f"*{t}", "Seq": "*i64", "scale": "fp32", "H": "i32",
                                "NQ": "i32", "split_len": "i32", **strides},
               {**flags, "BLOCK_Q": plan.BLOCK_Q, "SPLIT": split}),
    }
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (fn, sig, consts) in kernels.items():
            sig = {**sig, **{k: "constexpr" for k in consts}}
            compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                                      target=GPUTarget("cuda", 90, 32), options={"num_warps": plan.num_warps})
            path = os.path.join(tmp, f"{name}.ptx")
            with open(path, "w") as f:
                f.write(compiled.asm["ptx"])
            r = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", path, "-o", os.devnull], capture_output=True,
                               text=True, check=True)
            out[name] = " ".join(re.sub(r"ptxas info\s*:\s*", "", line).strip() for line in r.stderr.splitlines()
                                 if "registers" in line or "spill" in line)
    return out


# ---------------------------------------------------------------------------------------------
# DIN's activation unit (din_attention): one program per sample, its valid keys in BLOCK_L tiles.
# The first layer is c_q + M_q k (c_q = (Wa + Wc) q + b1, M_q = Wb - Wc + Wd diag(q), formed in the
# program from W1's four blocks), then the second layer and the score on the tile, then the pooling
# (online softmax when normalize); nothing of size [B, L, H] is stored. The backward recomputes the
# tile's layers twice (the softmax's statistics first, when normalize), writes dq and dk and adds
# the sample's parameter gradients into fp32 buffers with atomics. Hidden widths and d are padded
# to powers of two >= 16 (tl.dot's minimum) with zero weights. Compiled for sm_90a (no GPU run yet):
# at d = 32, hidden 80-40 the forward uses 160 registers at 4 warps, no spill; the backward, with 16
# warps, 128 registers and a 64-byte (fp32) / 32-byte (bf16) spill: to be tuned where a GPU measures it.


@triton.jit
def _din_act(z, alpha, mean, rstd, ACT: tl.constexpr):
    """(h, dh/dz, dh/dalpha) at the pre-activation z [BL, H]: sigmoid, PReLU or Dice (given statistics)."""
    if ACT == 0:
        h = 1.0 / (1.0 + tl.exp(-z))
        return h, h * (1.0 - h), z * 0.0
    elif ACT == 1:
        pos = z > 0
        return tl.where(pos, z, alpha[None, :] * z), tl.where(pos, 1.0, alpha[None, :] + z * 0.0), tl.where(pos, 0.0, z)
    else:
        p = 1.0 / (1.0 + tl.exp(-(z - mean[None, :]) * rstd[None, :]))
        gate = p + (1.0 - p) * alpha[None, :]
        return z * gate, gate + z * (1.0 - alpha[None, :]) * p * (1.0 - p) * rstd[None, :], z * (1.0 - p)


@triton.jit
def _din_layers(k, M, c, W2, b2, wo, bo, al1, mu1, rs1, al2, mu2, rs2, ACT: tl.constexpr, TWO: tl.constexpr,
                USE_DOT: tl.constexpr):
    """The tile's hidden layers and scores: (h1, dh1/dz1, dh1/dalpha1, h2, dh2/dz2, dh2/dalpha2, score);
    with one layer the second triple repeats the first."""
    h1, g1, q1 = _din_act(_mm_nt(k, M, USE_DOT) + c[None, :], al1, mu1, rs1, ACT)
    if TWO:
        h2, g2, q2 = _din_act(_mm_nt(h1, W2, USE_DOT) + b2[None, :], al2, mu2, rs2, ACT)
    else:
        h2, g2, q2 = h1, g1, q1
    return h1, g1, q1, h2, g2, q2, tl.sum(h2 * wo[None, :], 1) + bo


@triton.jit
def _din_params(q_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, wo_ptr, bo_ptr, act_ptr, b, d, H1, H2, NL, DP: tl.constexpr,
                H1P: tl.constexpr, H2P: tl.constexpr, HLP: tl.constexpr):
    """Sample b's first layer as (c_q, M_q) and the shared parameters, padded with zeros."""
    oe = tl.arange(0, DP)
    me = oe < d
    o1 = tl.arange(0, H1P)
    m1 = o1 < H1
    o2 = tl.arange(0, H2P)
    m2 = o2 < H2
    ol = tl.arange(0, HLP)
    qv = tl.load(q_ptr + b * d + oe, mask=me, other=0.0).to(tl.float32)
    wp = w1_ptr + o1[:, None] * (4 * d) + oe[None, :]
    wm = m1[:, None] & me[None, :]
    Wa = tl.load(wp, mask=wm, other=0.0)
    Wb = tl.load(wp + d, mask=wm, other=0.0)
    Wc = tl.load(wp + 2 * d, mask=wm, other=0.0)
    Wd = tl.load(wp + 3 * d, mask=wm, other=0.0)
    c = tl.sum((Wa + Wc) * qv[None, :], 1) + tl.load(b1_ptr + o1, mask=m1, other=0.0)
    M = Wb - Wc + Wd * qv[None, :]
    W2 = tl.load(w2_ptr + o2[:, None] * H1 + o1[None, :], mask=m2[:, None] & m1[None, :], other=0.0)
    b2 = tl.load(b2_ptr + o2, mask=m2, other=0.0)
    wo = tl.load(wo_ptr + ol, mask=ol < NL, other=0.0)
    bo = tl.load(bo_ptr)
    # activation parameters, rows of act_ptr: alpha1, mean1, rstd1 [H1P] then alpha2, mean2, rstd2 [H2P]
    al1 = tl.load(act_ptr + o1)
    mu1 = tl.load(act_ptr + H1P + o1)
    rs1 = tl.load(act_ptr + 2 * H1P + o1)
    al2 = tl.load(act_ptr + 3 * H1P + o2)
    mu2 = tl.load(act_ptr + 3 * H1P + H2P + o2)
    rs2 = tl.load(act_ptr + 3 * H1P + 2 * H2P + o2)
    return qv, Wa + Wc, Wd, c, M, W2, b2, wo, bo, al1, mu1, rs1, al2, mu2, rs2


@triton.jit
def _din_fwd_kernel(q_ptr, k_ptr, len_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, wo_ptr, bo_ptr, act_ptr, out_ptr, L, d,
                    H1, H2, NL, ACT: tl.constexpr, TWO: tl.constexpr, NORM: tl.constexpr, DP: tl.constexpr,
                    H1P: tl.constexpr, H2P: tl.constexpr, HLP: tl.constexpr, BL: tl.constexpr,
                    USE_DOT: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(len_ptr + b)
    oe = tl.arange(0, DP)
    me = oe < d
    qv, Wac, Wd, c, M, W2, b2, wo, bo, al1, mu1, rs1, al2, mu2, rs2 = _din_params(
        q_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, wo_ptr, bo_ptr, act_ptr, b, d, H1, H2, NL, DP, H1P, H2P, HLP)
    acc = tl.zeros((DP,), dtype=tl.float32)
    m_run = tl.full((), float("-inf"), tl.float32)
    l_run = tl.full((), 0.0, tl.float32)
    for l0 in range(0, n, BL):
        rows = l0 + tl.arange(0, BL)
        mr = rows < n
        k = tl.load(k_ptr + (b * L + rows[:, None]) * d + oe[None, :], mask=mr[:, None] & me[None, :],
                    other=0.0).to(tl.float32)
        _, _, _, _, _, _, s = _din_layers(k, M, c, W2, b2, wo, bo, al1, mu1, rs1, al2, mu2, rs2, ACT, TWO, USE_DOT)
        if NORM:
            s = tl.where(mr, s, -float("inf"))
            m_new = tl.maximum(m_run, tl.max(s, 0))
            scale = tl.exp(m_run - m_new)
            p = tl.where(mr, tl.exp(s - m_new), 0.0)
            l_run = l_run * scale + tl.sum(p, 0)
            acc = acc * scale + tl.sum(p[:, None] * k, 0)
            m_run = m_new
        else:
            acc += tl.sum(tl.where(mr, s, 0.0)[:, None] * k, 0)
    if NORM:
        acc = acc / tl.maximum(l_run, 1e-30)
    tl.store(out_ptr + b * d + oe, acc.to(out_ptr.dtype.element_ty), mask=me)


@triton.jit
def _din_bwd_kernel(g_ptr, q_ptr, k_ptr, len_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, wo_ptr, bo_ptr, act_ptr, dq_ptr,
                    dk_ptr, dw1_ptr, db1_ptr, dw2_ptr, db2_ptr, dwo_ptr, dbo_ptr, dact_ptr, L, d, H1, H2, NL,
                    ACT: tl.constexpr, TWO: tl.constexpr, NORM: tl.constexpr, DP: tl.constexpr, H1P: tl.constexpr,
                    H2P: tl.constexpr, HLP: tl.constexpr, BL: tl.constexpr, USE_DOT: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(len_ptr + b)
    oe = tl.arange(0, DP)
    me = oe < d
    o1 = tl.arange(0, H1P)
    m1 = o1 < H1
    o2 = tl.arange(0, H2P)
    m2 = o2 < H2
    ol = tl.arange(0, HLP)
    mlast = ol < NL
    qv, Wac, Wd, c, M, W2, b2, wo, bo, al1, mu1, rs1, al2, mu2, rs2 = _din_params(
        q_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, wo_ptr, bo_ptr, act_ptr, b, d, H1, H2, NL, DP, H1P, H2P, HLP)
    G = tl.load(g_ptr + b * d + oe, mask=me, other=0.0).to(tl.float32)
    wp = w1_ptr + o1[:, None] * (4 * d) + oe[None, :]
    wm = m1[:, None] & me[None, :]
    # the softmax's statistics and sum_j p_j (G . k_j), online
    m_run = tl.full((), float("-inf"), tl.float32)
    l_run = tl.full((), 0.0, tl.float32)
    t_run = tl.full((), 0.0, tl.float32)
    if NORM:
        for l0 in range(0, n, BL):
            rows = l0 + tl.arange(0, BL)
            mr = rows < n
            k = tl.load(k_ptr + (b * L + rows[:, None]) * d + oe[None, :], mask=mr[:, None] & me[None, :],
                        other=0.0).to(tl.float32)
            _, _, _, _, _, _, s = _din_layers(k, M, c, W2, b2, wo, bo, al1, mu1, rs1, al2, mu2, rs2, ACT, TWO,
                                              USE_DOT)
            s = tl.where(mr, s, -float("inf"))
            m_new = tl.maximum(m_run, tl.max(s, 0))
            scale = tl.exp(m_run - m_new)
            p = tl.where(mr, tl.exp(s - m_new), 0.0)
            l_run = l_run * scale + tl.sum(p, 0)
            t_run = t_run * scale + tl.sum(p * tl.sum(k * G[None, :], 1), 0)
            m_run = m_new
    inv_l = 1.0 / tl.maximum(l_run, 1e-30)
    dot = t_run * inv_l
    dc = tl.zeros((H1P,), dtype=tl.float32)
    dM = tl.zeros((H1P, DP), dtype=tl.float32)
    dW2 = tl.zeros((H2P, H1P), dtype=tl.float32)
    db2 = tl.zeros((H2P,), dtype=tl.float32)
    dwo = tl.zeros((HLP,), dtype=tl.float32)
    dal1 = tl.zeros((H1P,), dtype=tl.float32)
    dal2 = tl.zeros((H2P,), dtype=tl.float32)
    dbo = tl.full((), 0.0, tl.float32)
    for l0 in range(0, n, BL):
        rows = l0 + tl.arange(0, BL)
        mr = rows < n
        kp = (b * L + rows[:, None]) * d + oe[None, :]
        km = mr[:, None] & me[None, :]
        k = tl.load(k_ptr + kp, mask=km, other=0.0).to(tl.float32)
        h1, g1, q1, h2, g2, q2, s = _din_layers(k, M, c, W2, b2, wo, bo, al1, mu1, rs1, al2, mu2, rs2, ACT, TWO,
                                                USE_DOT)
        gk = tl.sum(k * G[None, :], 1)
        if NORM:
            w = tl.where(mr, tl.exp(s - m_run) * inv_l, 0.0)
            da = w * (gk - dot)
        else:
            w = tl.where(mr, s, 0.0)
            da = tl.where(mr, gk, 0.0)
        dbo += tl.sum(da, 0)
        dwo += tl.sum(da[:, None] * h2, 0)
        dh = da[:, None] * wo[None, :]
        if TWO:
            dz2 = dh * g2
            dal2 += tl.sum(dh * q2, 0)
            dW2 += _mm_tn(dz2, h1, USE_DOT)
            db2 += tl.sum(dz2, 0)
            dh1 = _mm_nn(dz2, W2, USE_DOT)
        else:
            dh1 = dh
        dz1 = dh1 * g1
        dal1 += tl.sum(dh1 * q1, 0)
        dc += tl.sum(dz1, 0)
        dM += _mm_tn(dz1, k, USE_DOT)
        dk = w[:, None] * G[None, :] + _mm_nn(dz1, M, USE_DOT)
        tl.store(dk_ptr + kp, dk.to(dk_ptr.dtype.element_ty), mask=km)
    dq = tl.sum(Wac * dc[:, None], 0) + tl.sum(dM * Wd, 0)
    tl.store(dq_ptr + b * d + oe, dq.to(dq_ptr.dtype.element_ty), mask=me)
    dcq = dc[:, None] * qv[None, :]
    dwp = dw1_ptr + o1[:, None] * (4 * d) + oe[None, :]
    tl.atomic_add(dwp, dcq, mask=wm)
    tl.atomic_add(dwp + d, dM, mask=wm)
    tl.atomic_add(dwp + 2 * d, dcq - dM, mask=wm)
    tl.atomic_add(dwp + 3 * d, dM * qv[None, :], mask=wm)
    tl.atomic_add(db1_ptr + o1, dc, mask=m1)
    if TWO:
        tl.atomic_add(dw2_ptr + o2[:, None] * H1 + o1[None, :], dW2, mask=m2[:, None] & m1[None, :])
        tl.atomic_add(db2_ptr + o2, db2, mask=m2)
    tl.atomic_add(dwo_ptr + ol, dwo, mask=mlast)
    tl.atomic_add(dbo_ptr, dbo)
    if ACT > 0:
        tl.atomic_add(dact_ptr + o1, dal1, mask=m1)
        if TWO:
            tl.atomic_add(dact_ptr + H1P + o2, dal2, mask=m2)


def _din_pad(n: int) -> int:
    return max(16, triton.next_power_of_2(max(int(n), 1)))


def _din_setup(q, w1, w2, act, alpha1, alpha2, mean1, var1, mean2, var2, eps):
    """Padded sizes and the activation parameters as one fp32 buffer [alpha1, mean1, rstd1 (H1P each),
    alpha2, mean2, rstd2 (H2P each)]."""
    d, H1 = q.shape[1], w1.shape[0]
    H2 = w2.shape[0] if w2.numel() else 0
    H1P, H2P = _din_pad(H1), _din_pad(H2)
    buf = torch.zeros(3 * H1P + 3 * H2P, dtype=torch.float32, device=q.device)
    for base, hp, h, alpha, mean, var in ((0, H1P, H1, alpha1, mean1, var1), (3 * H1P, H2P, H2, alpha2, mean2, var2)):
        if h == 0:
            continue
        if act >= 1:
            buf[base:base + h] = alpha.reshape(-1).float()
        buf[base + 2 * hp:base + 2 * hp + h] = 1.0
        if act == 2:
            buf[base + hp:base + hp + h] = mean.reshape(-1).float()
            buf[base + 2 * hp:base + 2 * hp + h] = (var.reshape(-1).float() + eps).rsqrt()
    meta = dict(ACT=int(act), TWO=H2 > 0, DP=_din_pad(d), H1P=H1P, H2P=H2P, HLP=H2P if H2 else H1P, BL=16,
                USE_DOT=not triton_interpreting())
    return d, H1, H2, buf, meta


def _din_weights(w1, b1, w2, b2, w_out, b_out):
    f = lambda t: t.float().contiguous()  # noqa: E731
    dummy = w1.new_zeros(1, dtype=torch.float32)
    return (f(w1), f(b1), f(w2) if w2.numel() else dummy, f(b2) if b2.numel() else dummy, f(w_out).reshape(-1),
            f(b_out).reshape(-1))


def din_attention(q, keys, lengths, w1, b1, w2, b2, w_out, b_out, act, normalize, alpha1, alpha2, mean1, var1,
                  mean2, var2, eps):
    B, L, _ = keys.shape
    d, H1, H2, actbuf, meta = _din_setup(q, w1, w2, act, alpha1, alpha2, mean1, var1, mean2, var2, eps)
    out = torch.empty_like(q)
    if out.numel():
        _din_fwd_kernel[(B,)](q, keys, lengths, *_din_weights(w1, b1, w2, b2, w_out, b_out), actbuf, out, L, d, H1,
                              H2, H2 or H1, NORM=bool(normalize), **meta)
    return out


def din_attention_backward(grad, q, keys, lengths, w1, b1, w2, b2, w_out, b_out, act, normalize, alpha1, alpha2,
                           mean1, var1, mean2, var2, eps):
    B, L, _ = keys.shape
    d, H1, H2, actbuf, meta = _din_setup(q, w1, w2, act, alpha1, alpha2, mean1, var1, mean2, var2, eps)
    weights = _din_weights(w1, b1, w2, b2, w_out, b_out)
    dq, dk = torch.empty_like(q), torch.zeros_like(keys)
    z = lambda t: torch.zeros(t.shape, dtype=torch.float32, device=q.device)  # noqa: E731
    dw1, db1, dw2, db2, dwo, dbo = (z(t) for t in weights)
    dact = torch.zeros(meta["H1P"] + meta["H2P"], dtype=torch.float32, device=q.device)
    if q.numel():
        _din_bwd_kernel[(B,)](grad.to(q.dtype).contiguous(), q, keys, lengths, *weights, actbuf, dq, dk, dw1, db1,
                              dw2, db2, dwo, dbo, dact, L, d, H1, H2, H2 or H1, NORM=bool(normalize),
                              num_warps=16, **meta)
    else:
        dq.zero_()
    # copies (views of one buffer would alias each other, which an op's outputs must not)
    like = lambda g, t: g.reshape(t.shape).to(t.dtype, copy=True) if t.numel() else torch.zeros_like(t)  # noqa: E731
    da1, da2 = dact[:H1], dact[meta["H1P"]:meta["H1P"] + H2]  # zeros for sigmoid (no slopes)
    return (dq, dk, like(dw1, w1), like(db1, b1), like(dw2, w2), like(db2, b2), like(dwo, w_out), like(dbo, b_out),
            like(da1, alpha1), like(da2, alpha2))
