"""Triton kernels for the interaction family: the FM second-order term and DLRM's pairwise dots.

Every kernel is a 1-D grid over blocks of BLOCK_B samples (``pid = program_id(0)`` as int64, so
offsets never overflow 32 bits); F and D are runtime arguments and the block sizes constexprs,
picked per (F, D, dtype) bucket by ``_fm_plan`` / ``_dot_plan`` (arithmetic, not autotuning: one
config per bucket, which also keeps the interpreter happy). Loads and stores are masked, so any F
and D work; everything accumulates in fp32 and is stored in the input dtype.

  fm forward    [BLOCK_B, BLOCK_D] fp32 accumulators s += x, q += x*x over the F rows, BLOCK_F
                rows per step unrolled (independent loads in flight, no cross-thread reduction);
                out = 0.5 * (s*s - q), summed over D when reduce.
  fm backward   the same pass for s, then a second pass over F writing g * (s - x); the second
                read of x is served by L2 (the program read those rows microseconds before).
  dot forward   the per-sample Gram matrix X X^T by batched (3-D) tl.dot, only its lower triangle:
                F <= 64 (``_dot_fwd_small_kernel``): the fields as one or two register tiles,
                  A = [0, 32) (or all of F <= 32) and C = [32, 32 + BLOCK_C), each loaded once per
                  D chunk; Gram blocks AA, CA, CC (F=39: 1792 MACs per k, not 64*64=4096).
                F > 64 (``_dot_fwd_kernel``): loop over field-tile pairs tj <= ti, D in chunks.
                Each block's triangle is scattered to out[b, i*(i-1)/2 + j] (i*(i+1)/2 + j with
                self_interaction).
  dot backward  gx = (G + G^T) X, G the lower triangle held in grad: symmetric S blocks gathered
                from grad by index math (diagonal doubled with self_interaction, zero without),
                then tl.dot(S, X). F <= 64: S gathered once per program, X_A and X_C loaded
                once per D chunk; F > 64: per (field tile, D chunk), loop over all field tiles.

fp32 inputs use input_precision="ieee" (exact against the fp32 reference; on a GPU that is the
FMA units). fp16 / bf16 go to the tensor cores with fp32 accumulation; under TRITON_INTERPRET
(bf16 tl.dot misbehaves there) the operands are converted to fp32 first (the DOT_FP32 constexpr).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from rankops.ops import _aot


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _fm_fwd_kernel(
    x_ptr, out_ptr, B, F, D,
    REDUCE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rb = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rd = tl.arange(0, BLOCK_D)
    mbd = (rb < B)[:, None] & (rd < D)[None, :]
    ptrs = x_ptr + rb[:, None] * F * D + rd[None, :]
    s = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
    q = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
    # BLOCK_F field rows per step, unrolled: independent loads in flight, and the sums stay
    # elementwise in each thread's registers (no cross-thread reduction).
    for f0 in range(0, F, BLOCK_F):
        for ff in tl.static_range(BLOCK_F):
            v = tl.load(ptrs + (f0 + ff) * D, mask=mbd & (f0 + ff < F), other=0.0).to(tl.float32)
            s += v
            q += v * v
    r = 0.5 * (s * s - q)
    if REDUCE:
        tl.store(out_ptr + rb, tl.sum(r, axis=1).to(out_ptr.dtype.element_ty), mask=rb < B)
    else:
        tl.store(out_ptr + rb[:, None] * D + rd[None, :], r.to(out_ptr.dtype.element_ty), mask=mbd)


@triton.jit
def _fm_bwd_kernel(
    grad_ptr, x_ptr, gx_ptr, B, F, D,
    REDUCE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rb = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rd = tl.arange(0, BLOCK_D)
    mbd = (rb < B)[:, None] & (rd < D)[None, :]
    offs = rb[:, None] * F * D + rd[None, :]
    s = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
    for f0 in range(0, F, BLOCK_F):
        for ff in tl.static_range(BLOCK_F):
            s += tl.load(x_ptr + offs + (f0 + ff) * D, mask=mbd & (f0 + ff < F), other=0.0).to(tl.float32)
    if REDUCE:
        g = tl.load(grad_ptr + rb, mask=rb < B, other=0.0).to(tl.float32)[:, None]  # [BLOCK_B, 1]
    else:
        g = tl.load(grad_ptr + rb[:, None] * D + rd[None, :], mask=mbd, other=0.0).to(tl.float32)
    for f0 in range(0, F, BLOCK_F):
        for ff in tl.static_range(BLOCK_F):
            m = mbd & (f0 + ff < F)
            v = tl.load(x_ptr + offs + (f0 + ff) * D, mask=m, other=0.0).to(tl.float32)
            tl.store(gx_ptr + offs + (f0 + ff) * D, (g * (s - v)).to(gx_ptr.dtype.element_ty), mask=m)


@triton.jit
def _mm(a, b, acc, DOT_FP32: tl.constexpr):
    """acc + a @ b (batched over dim 0), fp32 accumulation."""
    if DOT_FP32:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc)
    return out


@triton.jit
def _load_rows(xb, rows, k, F, D, mb3):
    """x[b, rows, k] as [BLOCK_B, len(rows), len(k)], zero outside (b < B, row < F, k < D)."""
    return tl.load(xb + rows[None, :, None] * D + k[None, None, :],
                   mask=mb3 & (rows < F)[None, :, None] & (k < D)[None, None, :], other=0.0)


@triton.jit
def _store_tril(ob, acc, fi, fj, F, mb3, SELF: tl.constexpr):
    """Scatter the (fi x fj) block of the Gram matrix into its row-major lower-triangle slots."""
    i = fi[None, :, None]
    j = fj[None, None, :]
    if SELF:
        p = i * (i + 1) // 2 + j
        keep = (j <= i) & (i < F)
    else:
        p = i * (i - 1) // 2 + j
        keep = (j < i) & (i < F)
    tl.store(ob + p, acc.to(ob.dtype.element_ty), mask=mb3 & keep)


@triton.jit
def _gather_sym(gb, fi, fj, F, mb3, SELF: tl.constexpr):
    """The (fi x fj) block of S = G + G^T, G the lower triangle held in grad: S[i, j] =
    grad[p(max(i,j), min(i,j))], the diagonal doubled with SELF and zero without."""
    i = fi[None, :, None]
    j = fj[None, None, :]
    hi = tl.maximum(i, j)
    lo = tl.minimum(i, j)
    if SELF:
        p = hi * (hi + 1) // 2 + lo
        valid = (i < F) & (j < F)
    else:
        p = hi * (hi - 1) // 2 + lo
        valid = (i < F) & (j < F) & (i != j)
    sv = tl.load(gb + p, mask=mb3 & valid, other=0.0)
    if SELF:  # doubling is exact in any dtype; done in fp32 (bf16 arithmetic is off in the interpreter)
        sv = tl.where(i == j, sv.to(tl.float32) * 2.0, sv.to(tl.float32)).to(sv.dtype)
    return sv


@triton.jit
def _dot_fwd_small_kernel(
    x_ptr, out_ptr, B, F, D, P,
    SELF: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_C: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """F <= 64: the sample's fields are held as two register tiles, A = fields [0, BLOCK_A) and
    (HAS_C) C = [BLOCK_A, BLOCK_A + BLOCK_C), each loaded once per D chunk; the Gram blocks AA,
    CA, CC are the lower triangle (F=39: 32 + 16 rows, 1792 MACs per k instead of 64x64=4096)."""
    pid = tl.program_id(0).to(tl.int64)
    rb = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    mb3 = (rb < B)[:, None, None]
    xb = x_ptr + rb[:, None, None] * F * D
    fa = tl.arange(0, BLOCK_A)
    fc = BLOCK_A + tl.arange(0, BLOCK_C)
    rk = tl.arange(0, BLOCK_K)
    acc_aa = tl.zeros([BLOCK_B, BLOCK_A, BLOCK_A], dtype=tl.float32)
    acc_ca = tl.zeros([BLOCK_B, BLOCK_C, BLOCK_A], dtype=tl.float32)
    acc_cc = tl.zeros([BLOCK_B, BLOCK_C, BLOCK_C], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        k = k0 + rk
        a = _load_rows(xb, fa, k, F, D, mb3)
        at = tl.permute(a, (0, 2, 1))
        acc_aa = _mm(a, at, acc_aa, DOT_FP32)
        if HAS_C:
            c = _load_rows(xb, fc, k, F, D, mb3)
            acc_ca = _mm(c, at, acc_ca, DOT_FP32)
            acc_cc = _mm(c, tl.permute(c, (0, 2, 1)), acc_cc, DOT_FP32)
    ob = out_ptr + rb[:, None, None] * P
    _store_tril(ob, acc_aa, fa, fa, F, mb3, SELF)
    if HAS_C:
        _store_tril(ob, acc_ca, fc, fa, F, mb3, SELF)
        _store_tril(ob, acc_cc, fc, fc, F, mb3, SELF)


@triton.jit
def _dot_fwd_kernel(
    x_ptr, out_ptr, B, F, D, P,
    SELF: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Any F: loop over the lower-triangular field-tile pairs (tj <= ti), D in BLOCK_K chunks."""
    pid = tl.program_id(0).to(tl.int64)
    rb = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    mb3 = (rb < B)[:, None, None]
    xb = x_ptr + rb[:, None, None] * F * D
    ob = out_ptr + rb[:, None, None] * P
    rf = tl.arange(0, BLOCK_F)
    rk = tl.arange(0, BLOCK_K)
    n_tiles = tl.cdiv(F, BLOCK_F)
    for ti in range(0, n_tiles):
        fi = ti * BLOCK_F + rf
        for tj in range(0, ti + 1):
            fj = tj * BLOCK_F + rf
            acc = tl.zeros([BLOCK_B, BLOCK_F, BLOCK_F], dtype=tl.float32)
            for k0 in range(0, D, BLOCK_K):
                k = k0 + rk
                a = _load_rows(xb, fi, k, F, D, mb3)
                # X[tj]^T as [BLOCK_B, BLOCK_K, BLOCK_F], loaded transposed
                bt = tl.load(xb + fj[None, None, :] * D + k[None, :, None],
                             mask=mb3 & (fj < F)[None, None, :] & (k < D)[None, :, None], other=0.0)
                acc = _mm(a, bt, acc, DOT_FP32)
            _store_tril(ob, acc, fi, fj, F, mb3, SELF)


@triton.jit
def _dot_bwd_small_kernel(
    grad_ptr, x_ptr, gx_ptr, B, F, D, P,
    SELF: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_C: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """F <= 64, tiles A and C as in the forward: S is gathered once per program (blocks AA, AC,
    CA, CC), then per D chunk gx_A = S_AA X_A + S_AC X_C and gx_C = S_CA X_A + S_CC X_C."""
    pid = tl.program_id(0).to(tl.int64)
    rb = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    mb3 = (rb < B)[:, None, None]
    xb = x_ptr + rb[:, None, None] * F * D
    gxb = gx_ptr + rb[:, None, None] * F * D
    gb = grad_ptr + rb[:, None, None] * P
    fa = tl.arange(0, BLOCK_A)
    fc = BLOCK_A + tl.arange(0, BLOCK_C)
    rk = tl.arange(0, BLOCK_K)
    s_aa = _gather_sym(gb, fa, fa, F, mb3, SELF)
    if HAS_C:
        s_ac = _gather_sym(gb, fa, fc, F, mb3, SELF)
        s_ca = _gather_sym(gb, fc, fa, F, mb3, SELF)
        s_cc = _gather_sym(gb, fc, fc, F, mb3, SELF)
    for k0 in range(0, D, BLOCK_K):
        k = k0 + rk
        xa = _load_rows(xb, fa, k, F, D, mb3)
        acc_a = _mm(s_aa, xa, tl.zeros([BLOCK_B, BLOCK_A, BLOCK_K], dtype=tl.float32), DOT_FP32)
        if HAS_C:
            xc = _load_rows(xb, fc, k, F, D, mb3)
            acc_a = _mm(s_ac, xc, acc_a, DOT_FP32)
            acc_c = _mm(s_ca, xa, tl.zeros([BLOCK_B, BLOCK_C, BLOCK_K], dtype=tl.float32), DOT_FP32)
            acc_c = _mm(s_cc, xc, acc_c, DOT_FP32)
            tl.store(gxb + fc[None, :, None] * D + k[None, None, :], acc_c.to(gx_ptr.dtype.element_ty),
                     mask=mb3 & (fc < F)[None, :, None] & (k < D)[None, None, :])
        tl.store(gxb + fa[None, :, None] * D + k[None, None, :], acc_a.to(gx_ptr.dtype.element_ty),
                 mask=mb3 & (fa < F)[None, :, None] & (k < D)[None, None, :])


@triton.jit
def _dot_bwd_kernel(
    grad_ptr, x_ptr, gx_ptr, B, F, D, P,
    SELF: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Any F: per field tile ti and D chunk, loop over every tile tj: S[ti, tj] @ X[tj]."""
    pid = tl.program_id(0).to(tl.int64)
    rb = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    mb3 = (rb < B)[:, None, None]
    xb = x_ptr + rb[:, None, None] * F * D
    gxb = gx_ptr + rb[:, None, None] * F * D
    gb = grad_ptr + rb[:, None, None] * P
    rf = tl.arange(0, BLOCK_F)
    rk = tl.arange(0, BLOCK_K)
    n_tiles = tl.cdiv(F, BLOCK_F)
    for ti in range(0, n_tiles):
        fi = ti * BLOCK_F + rf
        for k0 in range(0, D, BLOCK_K):
            k = k0 + rk
            acc = tl.zeros([BLOCK_B, BLOCK_F, BLOCK_K], dtype=tl.float32)
            for tj in range(0, n_tiles):
                fj = tj * BLOCK_F + rf
                sv = _gather_sym(gb, fi, fj, F, mb3, SELF)
                acc = _mm(sv, _load_rows(xb, fj, k, F, D, mb3), acc, DOT_FP32)
            tl.store(gxb + fi[None, :, None] * D + k[None, None, :], acc.to(gx_ptr.dtype.element_ty),
                     mask=mb3 & (fi < F)[None, :, None] & (k < D)[None, None, :])


# ---------------------------------------------------------------------------------------------
# plans: which kernel and which constexprs serve a shape. One per (F, D, dtype) bucket, chosen by
# arithmetic, not autotuning; the launchers and aot_specs() both use them, so what the report
# compiles is what runs.


@dataclass(frozen=True)
class _Plan:
    fn: object  # the @triton.jit kernel
    block_b: int  # samples per program: the grid is cdiv(B, block_b)
    constexprs: tuple  # ((name, value), ...)
    num_warps: int = 4

    @property
    def kernel(self) -> str:
        return self.fn.__name__

    def name(self) -> str:
        short = {"BLOCK_B": "B", "BLOCK_F": "F", "BLOCK_D": "D", "BLOCK_A": "A", "BLOCK_C": "C", "BLOCK_K": "K"}
        c = dict(self.constexprs)
        if not c.get("HAS_C", True):
            c.pop("BLOCK_C")
        return "_".join(f"{short[k]}{v}" for k, v in c.items() if k in short) + f"_w{self.num_warps}"


_np2 = triton.next_power_of_2
SMALL_F = 64  # up to here the dot kernels keep a sample's fields in (at most) two register tiles


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def _fm_plan(F: int, D: int, reduce: bool, backward: bool) -> _Plan:
    # s and q hold 1024 fp32 per program (8 per thread each at 4 warps); each loop step issues
    # BLOCK_F = 4 independent row loads per thread (16-byte vectors where D allows).
    block_d = _np2(max(D, 1))
    block_b = max(1, 1024 // block_d)
    ce = dict(REDUCE=bool(reduce), BLOCK_B=block_b, BLOCK_F=min(4, _np2(max(F, 1))), BLOCK_D=block_d)
    num_warps = min(16, max(4, block_d // 256))  # D > 1024: more threads, not more registers
    return _Plan(_fm_bwd_kernel if backward else _fm_fwd_kernel, block_b, tuple(ce.items()), num_warps)


def _dot_plan(F: int, D: int, dtype: torch.dtype, self_interaction: bool, backward: bool,
              interpret: bool | None = None) -> _Plan:
    """Tile sizes: every tl.dot dim >= 16 and a power of two. fp16/bf16 run on tensor cores: D in
    chunks of up to 64 (32), BLOCK_B samples so that a program's operand tiles hold ~4096 elements
    (~2048 for the three-accumulator forward, F in (32, 64]; large F ~2048 per tile). fp32 runs
    ieee on the FMA units with operands and accumulators in registers: D chunks of 16 and ~1024
    accumulator elements per program. The constants were checked with scripts/gpu_report.py:
    the next size up spills or crosses ~200 registers at the benchmark shapes."""
    fma = dtype == torch.float32
    dot_fp32 = fma or (_interpreting() if interpret is None else interpret)
    # D chunk: 16 for the FMA path; up to 64 on tensor cores, 32 in the backward (its S blocks
    # are live beside the [rows, K] accumulators: K=64 costs 150-200 registers there).
    k_max = 16 if fma else 32 if backward else 64
    block_k = max(16, min(k_max, _np2(max(D, 1))))
    if F <= SMALL_F:
        if F <= 32:
            a, c, has_c = max(16, _np2(F)), 16, False
        else:
            a, c, has_c = 32, max(16, _np2(F - 32)), True
        rows = a + (c if has_c else 0)
        if not fma:  # ~4096-element operand tiles; the forward's three accumulators with C: ~2048
            bb = (4096 if backward or not has_c else 2048) // (rows * block_k)
        elif backward:
            bb = 512 // (rows * block_k)
        else:
            bb = 1024 // (a * a + (c * a + c * c if has_c else 0))
        ce = dict(SELF=bool(self_interaction), BLOCK_B=_pow2_floor(bb), BLOCK_A=a, BLOCK_C=c, HAS_C=has_c,
                  BLOCK_K=block_k, DOT_FP32=dot_fp32)
        fn = _dot_bwd_small_kernel if backward else _dot_fwd_small_kernel
    else:
        bf = 16 if fma else 32
        bb = (512 // (bf * bf) if not backward else 1) if fma else 2048 // (bf * block_k)
        ce = dict(SELF=bool(self_interaction), BLOCK_B=_pow2_floor(bb), BLOCK_F=bf, BLOCK_K=block_k,
                  DOT_FP32=dot_fp32)
        fn = _dot_bwd_kernel if backward else _dot_fwd_kernel
    return _Plan(fn, ce["BLOCK_B"], tuple(ce.items()))


def num_pairs(F: int, self_interaction: bool) -> int:
    return F * (F + 1) // 2 if self_interaction else F * (F - 1) // 2


def _launch(plan: _Plan, B: int, *args) -> None:
    plan.fn[(triton.cdiv(B, plan.block_b),)](*args, **dict(plan.constexprs), num_warps=plan.num_warps)


# ---------------------------------------------------------------------------------------------
# launchers (contiguous inputs; new outputs)


def fm_interaction(x: torch.Tensor, reduce: bool) -> torch.Tensor:
    B, F, D = x.shape
    out = x.new_empty(B, 1 if reduce else D)
    if out.numel() == 0:
        return out
    if x.numel() == 0:
        return out.zero_()
    _launch(_fm_plan(F, D, reduce, backward=False), B, x, out, B, F, D)
    return out


def fm_interaction_backward(grad: torch.Tensor, x: torch.Tensor, reduce: bool) -> torch.Tensor:
    B, F, D = x.shape
    gx = torch.empty_like(x, memory_format=torch.contiguous_format)
    if gx.numel() == 0:
        return gx
    _launch(_fm_plan(F, D, reduce, backward=True), B, grad, x, gx, B, F, D)
    return gx


def dot_interaction(x: torch.Tensor, self_interaction: bool) -> torch.Tensor:
    B, F, D = x.shape
    P = num_pairs(F, self_interaction)
    out = x.new_empty(B, P)
    if out.numel() == 0:
        return out
    if x.numel() == 0:  # D == 0: every dot product is empty
        return out.zero_()
    _launch(_dot_plan(F, D, x.dtype, self_interaction, backward=False), B, x, out, B, F, D, P)
    return out


def dot_interaction_backward(grad: torch.Tensor, x: torch.Tensor, self_interaction: bool) -> torch.Tensor:
    B, F, D = x.shape
    P = num_pairs(F, self_interaction)
    gx = torch.empty_like(x, memory_format=torch.contiguous_format)
    if gx.numel() == 0:
        return gx
    if P == 0:  # F == 1 without self_interaction: no pair, no gradient
        return gx.zero_()
    _launch(_dot_plan(F, D, x.dtype, self_interaction, backward=True), B, grad, x, gx, B, F, D, P)
    return gx


# ---------------------------------------------------------------------------------------------
# ahead-of-time specs for scripts/gpu_report.py

# The benchmark shapes (bench/ and the targets in the design brief), plus one large F so the
# report also covers the tile-pair kernels (F > SMALL_F).
BENCH_B = 65536
BENCH_FD = [(26, 16), (26, 64), (26, 128), (39, 16), (39, 64), (39, 128), (128, 64)]
_SIG = _aot.SIG


def _spec(plan: _Plan, variant: str, args: list) -> dict:
    return _aot.spec(plan.fn, f"{plan.name()} {variant}", args, dict(plan.constexprs), plan.num_warps)


def aot_specs() -> list[dict]:
    """One spec per (kernel, constexprs, dtype) the launchers use at the benchmark shapes on a GPU
    (the first shape that uses it gives the integer arguments' divisibility hints). Each compiles
    with triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90,
    32), options={"num_warps": ..., "num_stages": ...}). DOT_FP32 is what a GPU run uses: True for
    fp32 only."""
    specs: dict[tuple, dict] = {}
    B = BENCH_B
    for dtype, t in _SIG.items():
        ptr = "*" + t
        for F, D in BENCH_FD:
            for reduce in (True, False):
                for bwd in (False, True):
                    plan = _fm_plan(F, D, reduce, bwd)
                    tensors = ["grad_ptr", "x_ptr", "gx_ptr"] if bwd else ["x_ptr", "out_ptr"]
                    args = [(n, ptr, None) for n in tensors] + [("B", "i32", B), ("F", "i32", F), ("D", "i32", D)]
                    key = (plan.kernel, plan.constexprs, t)
                    specs.setdefault(key, _spec(plan, f"{t} reduce={int(reduce)}", args))
            for self_interaction in (False, True):
                P = num_pairs(F, self_interaction)
                for bwd in (False, True):
                    plan = _dot_plan(F, D, dtype, self_interaction, bwd, interpret=False)
                    tensors = ["grad_ptr", "x_ptr", "gx_ptr"] if bwd else ["x_ptr", "out_ptr"]
                    args = [(n, ptr, None) for n in tensors] + [
                        ("B", "i32", B), ("F", "i32", F), ("D", "i32", D), ("P", "i32", P)]
                    key = (plan.kernel, plan.constexprs, t)
                    specs.setdefault(key, _spec(plan, f"{t} self={int(self_interaction)}", args))
    return list(specs.values())
