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
