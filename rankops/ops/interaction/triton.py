"""Triton kernels for the interaction family: the FM second-order term and DLRM's pairwise dots.

Every kernel is a 1-D grid over blocks of BLOCK_B samples (``pid = program_id(0)`` as int64, so
offsets never overflow 32 bits); F and D are runtime arguments, the block sizes are constexprs
picked per shape by the ``_*_config`` functions below (bucketed by F and D, one config per bucket:
no autotune, which also keeps the interpreter happy). Loads and stores are masked, so any F and D
work; everything accumulates in fp32 and is stored in the input dtype.

  fm forward   loop over F in chunks of BLOCK_F rows: s += x, q += x*x ([BLOCK_B, BLOCK_D] fp32),
               out = 0.5 * (s*s - q), summed over D when reduce.
  fm backward  the same loop for s, then a second pass over F writing g * (s - x); the second
               read of x hits L2 (a program's rows were read microseconds before).
  dot forward  the per-sample Gram matrix X X^T by batched tl.dot ([BLOCK_B, BLOCK_F, BLOCK_K] x
               [BLOCK_B, BLOCK_K, BLOCK_F]) over the lower-triangular field-tile pairs only
               (tj <= ti), D in chunks of BLOCK_K; each tile's triangle is scattered to
               out[b, i*(i-1)/2 + j] (i*(i+1)/2 + j with self_interaction).
  dot backward gx = (G + G^T) X: per field tile ti and D chunk, loop over all tiles tj, gather the
               symmetric S tile from grad with index math (diagonal doubled with
               self_interaction, zero without) and accumulate tl.dot(S, X[tj]).

fp32 inputs use input_precision="ieee" (exact against the fp32 reference). fp16 / bf16 go to the
tensor cores with fp32 accumulation on a GPU; under TRITON_INTERPRET (bf16 tl.dot misbehaves
there) the operands are converted to fp32 first (the DOT_FP32 constexpr).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl



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
def _dot_fwd_kernel(
    x_ptr, out_ptr, B, F, D, P,
    SELF: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr,
    ONE_TILE: tl.constexpr, DOT_FP32: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rb = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rf = tl.arange(0, BLOCK_F)
    rk = tl.arange(0, BLOCK_K)
    mb3 = (rb < B)[:, None, None]
    xb = x_ptr + rb[:, None, None] * F * D
    ob = out_ptr + rb[:, None, None] * P
    n_tiles = tl.cdiv(F, BLOCK_F)
    for ti in range(0, n_tiles):
        fi = ti * BLOCK_F + rf
        for tj in range(0, ti + 1):
            fj = tj * BLOCK_F + rf
            acc = tl.zeros([BLOCK_B, BLOCK_F, BLOCK_F], dtype=tl.float32)
            for k0 in range(0, D, BLOCK_K):
                k = k0 + rk
                a = tl.load(xb + fi[None, :, None] * D + k[None, None, :],
                            mask=mb3 & (fi < F)[None, :, None] & (k < D)[None, None, :], other=0.0)
                if ONE_TILE:  # the sample's fields fit one tile: X^T is a permute, not a second load
                    bt = tl.permute(a, (0, 2, 1))
                else:  # [BLOCK_B, BLOCK_K, BLOCK_F], loaded transposed
                    bt = tl.load(xb + fj[None, None, :] * D + k[None, :, None],
                                 mask=mb3 & (fj < F)[None, None, :] & (k < D)[None, :, None], other=0.0)
                if DOT_FP32:
                    acc = tl.dot(a.to(tl.float32), bt.to(tl.float32), acc, input_precision="ieee")
                else:
                    acc = tl.dot(a, bt, acc)
            i = fi[None, :, None]
            j = fj[None, None, :]
            if SELF:
                p = i * (i + 1) // 2 + j
                keep = (j <= i) & (i < F)
            else:
                p = i * (i - 1) // 2 + j
                keep = (j < i) & (i < F)
            tl.store(ob + p, acc.to(out_ptr.dtype.element_ty), mask=mb3 & keep)


@triton.jit
def _dot_bwd_kernel(
    grad_ptr, x_ptr, gx_ptr, B, F, D, P,
    SELF: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rb = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rf = tl.arange(0, BLOCK_F)
    rk = tl.arange(0, BLOCK_K)
    mb3 = (rb < B)[:, None, None]
    xb = x_ptr + rb[:, None, None] * F * D
    gxb = gx_ptr + rb[:, None, None] * F * D
    gb = grad_ptr + rb[:, None, None] * P
    n_tiles = tl.cdiv(F, BLOCK_F)
    for ti in range(0, n_tiles):
        fi = ti * BLOCK_F + rf
        i = fi[None, :, None]
        for k0 in range(0, D, BLOCK_K):
            k = k0 + rk
            acc = tl.zeros([BLOCK_B, BLOCK_F, BLOCK_K], dtype=tl.float32)
            for tj in range(0, n_tiles):
                fj = tj * BLOCK_F + rf
                j = fj[None, None, :]
                # S[i, j] = G[max(i,j), min(i,j)]: the symmetric matrix read off the lower triangle
                hi = tl.maximum(i, j)
                lo = tl.minimum(i, j)
                if SELF:
                    p = hi * (hi + 1) // 2 + lo
                    valid = (i < F) & (j < F)
                else:
                    p = hi * (hi - 1) // 2 + lo
                    valid = (i < F) & (j < F) & (i != j)
                sv = tl.load(gb + p, mask=mb3 & valid, other=0.0)
                if SELF:  # (G + G^T) counts the diagonal twice; doubling is exact in any dtype
                    sv = tl.where(i == j, sv.to(tl.float32) * 2.0, sv.to(tl.float32)).to(sv.dtype)
                xj = tl.load(xb + fj[None, :, None] * D + k[None, None, :],
                             mask=mb3 & (fj < F)[None, :, None] & (k < D)[None, None, :], other=0.0)
                if DOT_FP32:
                    acc = tl.dot(sv.to(tl.float32), xj.to(tl.float32), acc, input_precision="ieee")
                else:
                    acc = tl.dot(sv, xj, acc)
            tl.store(gxb + i * D + k[None, None, :], acc.to(gx_ptr.dtype.element_ty),
                     mask=mb3 & (i < F) & (k < D)[None, None, :])


# ---------------------------------------------------------------------------------------------
# configs: one per (F, D) bucket, chosen by arithmetic, not autotuning


@dataclass(frozen=True)
class _Config:
    block_b: int
    block_f: int
    block_k: int  # BLOCK_D for FM (the whole padded D), the D chunk for dot
    num_warps: int = 4

    def name(self) -> str:
        return f"B{self.block_b}_F{self.block_f}_K{self.block_k}_w{self.num_warps}"


_np2 = triton.next_power_of_2


def _fm_config(F: int, D: int) -> _Config:
    # s and q hold 1024 fp32 per program (8 per thread each at 4 warps); each loop step issues
    # BLOCK_F = 4 independent row loads per thread (16-byte vectors for fp32 where D allows).
    block_d = _np2(max(D, 1))
    block_b = max(1, 1024 // block_d)
    block_f = min(4, _np2(F))
    return _Config(block_b, block_f, block_d, 4)


def _dot_block_f(F: int) -> int:
    # One tile up to 32 fields (F=26: a 32x32 Gram, loaded once); 16-field tiles up to 64
    # (F=39: 6 tile pairs of 16x16 instead of a 64x64 Gram, 2.7x fewer MACs); 32 beyond.
    if F <= 32:
        return max(16, _np2(F))  # tl.dot needs every dim >= 16
    return 16 if F <= 64 else 32


def _dot_fwd_config(F: int, D: int, dtype: torch.dtype) -> _Config:
    block_f = _dot_block_f(F)
    if dtype == torch.float32:
        # ieee fp32 runs on FMA units with both operands and the Gram tile in registers: keep
        # every tile at ~512 elements (more spills, see scripts/gpu_report.py).
        return _Config(max(1, 512 // (block_f * block_f)), block_f, 16, 4)
    block_k = max(16, min(64, _np2(max(D, 1))))
    return _Config(max(1, 2048 // (block_f * block_k)), block_f, block_k, 4)  # ~2048-element operand tiles


def _dot_bwd_config(F: int, D: int, dtype: torch.dtype) -> _Config:
    block_f = _dot_block_f(F)
    if dtype == torch.float32:
        return _Config(max(1, 512 // (block_f * 16)), block_f, 16, 4)
    block_k = max(16, min(64, _np2(max(D, 1))))
    return _Config(max(1, 2048 // (block_f * block_k)), block_f, block_k, 4)


def _dot_fp32(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 or _interpreting()


def num_pairs(F: int, self_interaction: bool) -> int:
    return F * (F + 1) // 2 if self_interaction else F * (F - 1) // 2


# ---------------------------------------------------------------------------------------------
# launchers (contiguous inputs; new outputs)


def fm_interaction(x: torch.Tensor, reduce: bool) -> torch.Tensor:
    B, F, D = x.shape
    out = x.new_empty(B, 1 if reduce else D)
    if out.numel() == 0:
        return out
    if x.numel() == 0:
        return out.zero_()
    c = _fm_config(F, D)
    _fm_fwd_kernel[(triton.cdiv(B, c.block_b),)](
        x, out, B, F, D,
        REDUCE=bool(reduce), BLOCK_B=c.block_b, BLOCK_F=c.block_f, BLOCK_D=c.block_k, num_warps=c.num_warps,
    )
    return out


def fm_interaction_backward(grad: torch.Tensor, x: torch.Tensor, reduce: bool) -> torch.Tensor:
    B, F, D = x.shape
    gx = torch.empty_like(x, memory_format=torch.contiguous_format)
    if gx.numel() == 0:
        return gx
    c = _fm_config(F, D)
    _fm_bwd_kernel[(triton.cdiv(B, c.block_b),)](
        grad, x, gx, B, F, D,
        REDUCE=bool(reduce), BLOCK_B=c.block_b, BLOCK_F=c.block_f, BLOCK_D=c.block_k, num_warps=c.num_warps,
    )
    return gx


def dot_interaction(x: torch.Tensor, self_interaction: bool) -> torch.Tensor:
    B, F, D = x.shape
    P = num_pairs(F, self_interaction)
    out = x.new_empty(B, P)
    if out.numel() == 0:
        return out
    if x.numel() == 0:  # D == 0: every dot product is empty
        return out.zero_()
    c = _dot_fwd_config(F, D, x.dtype)
    _dot_fwd_kernel[(triton.cdiv(B, c.block_b),)](
        x, out, B, F, D, P,
        SELF=bool(self_interaction), BLOCK_B=c.block_b, BLOCK_F=c.block_f, BLOCK_K=c.block_k,
        ONE_TILE=F <= c.block_f, DOT_FP32=_dot_fp32(x.dtype), num_warps=c.num_warps,
    )
    return out


def dot_interaction_backward(grad: torch.Tensor, x: torch.Tensor, self_interaction: bool) -> torch.Tensor:
    B, F, D = x.shape
    P = num_pairs(F, self_interaction)
    gx = torch.empty_like(x, memory_format=torch.contiguous_format)
    if gx.numel() == 0:
        return gx
    c = _dot_bwd_config(F, D, x.dtype)
    _dot_bwd_kernel[(triton.cdiv(B, c.block_b),)](
        grad, x, gx, B, F, D, P,
        SELF=bool(self_interaction), BLOCK_B=c.block_b, BLOCK_F=c.block_f, BLOCK_K=c.block_k,
        DOT_FP32=_dot_fp32(x.dtype), num_warps=c.num_warps,
    )
    return gx


# ---------------------------------------------------------------------------------------------
# ahead-of-time specs for scripts/gpu_report.py

# The benchmark shapes (bench/ and the targets in the design brief).
BENCH_B = 65536
BENCH_FD = [(26, 16), (26, 64), (26, 128), (39, 16), (39, 64), (39, 128)]
_SIG = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _spec(fn, kernel: str, config: str, args: list, constexprs: dict, num_warps: int) -> dict:
    """args: [(name, type, value)] in the kernel's order; value None for pointers (always 16-byte
    aligned from torch's allocator). Integers divisible by 16 get the divisibility hint the JIT
    would give them at launch, so the AOT compile matches what runs."""
    signature, attrs = {}, {}
    for idx, (name, ty, value) in enumerate(args):
        signature[name] = ty
        if ty.startswith("*") or (value is not None and value % 16 == 0):
            attrs[(idx,)] = [["tt.divisibility", 16]]
    for name in constexprs:
        signature[name] = "constexpr"
    return dict(kernel=kernel, fn=fn, config=config, signature=signature, constexprs=dict(constexprs),
                attrs=attrs, num_warps=num_warps, num_stages=3)


def aot_specs() -> list[dict]:
    """One spec per (kernel, config, dtype, variant) the launchers use at the benchmark shapes on a
    GPU, deduplicated; each compiles with triton.compile(ASTSource(fn, signature, constexprs,
    attrs), target=GPUTarget("cuda", 90, 32), options={num_warps, num_stages})."""
    specs: dict[tuple, dict] = {}
    B = BENCH_B
    for dtype, t in _SIG.items():
        ptr = "*" + t
        dot_fp32 = dtype == torch.float32
        for F, D in BENCH_FD:
            c = _fm_config(F, D)
            for reduce in (True, False):
                ce = dict(REDUCE=reduce, BLOCK_B=c.block_b, BLOCK_F=c.block_f, BLOCK_D=c.block_k)
                variant = f"{t} reduce={int(reduce)}"
                key = ("fm_fwd", tuple(ce.items()), t, D % 16 == 0)
                specs.setdefault(key, _spec(
                    _fm_fwd_kernel, "_fm_fwd_kernel", f"{c.name()} {variant}",
                    [("x_ptr", ptr, None), ("out_ptr", ptr, None), ("B", "i32", B), ("F", "i32", F), ("D", "i32", D)],
                    ce, c.num_warps))
                key = ("fm_bwd", tuple(ce.items()), t, D % 16 == 0)
                specs.setdefault(key, _spec(
                    _fm_bwd_kernel, "_fm_bwd_kernel", f"{c.name()} {variant}",
                    [("grad_ptr", ptr, None), ("x_ptr", ptr, None), ("gx_ptr", ptr, None),
                     ("B", "i32", B), ("F", "i32", F), ("D", "i32", D)],
                    ce, c.num_warps))
            for self_interaction in (False, True):
                P = num_pairs(F, self_interaction)
                variant = f"{t} self={int(self_interaction)}"
                c = _dot_fwd_config(F, D, dtype)
                ce = dict(SELF=self_interaction, BLOCK_B=c.block_b, BLOCK_F=c.block_f, BLOCK_K=c.block_k,
                          ONE_TILE=F <= c.block_f, DOT_FP32=dot_fp32)
                args = [("x_ptr", ptr, None), ("out_ptr", ptr, None), ("B", "i32", B), ("F", "i32", F),
                        ("D", "i32", D), ("P", "i32", P)]
                key = ("dot_fwd", tuple(ce.items()), t, D % 16 == 0, P % 16 == 0)
                specs.setdefault(key, _spec(_dot_fwd_kernel, "_dot_fwd_kernel", f"{c.name()} {variant}",
                                            args, ce, c.num_warps))
                c = _dot_bwd_config(F, D, dtype)
                ce = dict(SELF=self_interaction, BLOCK_B=c.block_b, BLOCK_F=c.block_f, BLOCK_K=c.block_k,
                          DOT_FP32=dot_fp32)
                args = [("grad_ptr", ptr, None), ("x_ptr", ptr, None), ("gx_ptr", ptr, None), ("B", "i32", B),
                        ("F", "i32", F), ("D", "i32", D), ("P", "i32", P)]
                key = ("dot_bwd", tuple(ce.items()), t, D % 16 == 0, P % 16 == 0)
                specs.setdefault(key, _spec(_dot_bwd_kernel, "_dot_bwd_kernel", f"{c.name()} {variant}",
                                            args, ce, c.num_warps))
    return list(specs.values())
