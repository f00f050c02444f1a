"""Triton kernels for the cross family.

One GEMM kernel with constexpr prologue / epilogue options serves every product of the full-rank
and low-rank layers, forward and backward, so that nothing elementwise makes its own pass over HBM:

    C = (A * A2) @ Bm  [+ bias]  ->  [store P]  ->  [* MUL]  [+ ADD]  ->  store C
    [AUX_OUT = AUX1 * AUX2 on the same tile]      [row sums of (A * A2) -> ROWSUM]

  forward   out = x0 * (xl @ W.T + b) + xl          A = xl, Bm = W.T, MUL = x0, ADD = xl, P = p (training)
  backward  dxl = (g * x0) @ W + g, dx0 = g * p     A = g, A2 = x0 (dp formed in registers), ADD = g, AUX
            dW  = (g * x0).T @ xl, db = sum_b dp    A = (g, x0) transposed views, ROWSUM = db

Operands are addressed through strides, so transposes are free views. Accumulation is fp32; the
dot runs in the input dtype on a GPU (bf16/fp16 tensor cores, IEEE fp32 for fp32 inputs) and in fp32
under the Triton interpreter, where bf16 dots misbehave. The v1 layer (no GEMM) has a row-block
kernel of its own for each direction.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rankops.backend import triton_interpreting
from rankops.ops.cross import reference as _reference


@triton.jit
def _gemm_kernel(
    a_ptr, a2_ptr, b_ptr, bias_ptr, mul_ptr, add_ptr, c_ptr, p_ptr, aux1_ptr, aux2_ptr, aux_ptr, rowsum_ptr,
    M, N, K,
    s_am, s_ak, s_bk, s_bn, s_cm,
    HAS_A2: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MUL: tl.constexpr, HAS_ADD: tl.constexpr,
    STORE_P: tl.constexpr, HAS_AUX: tl.constexpr, ROWSUM: tl.constexpr, LOW_PRECISION_DOT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    # int32 offsets: int64 ones doubled the registers of the [BM, BK] address tiles and made the
    # kernel spill on sm_90 (ptxas -v); the launcher refuses tensors of 2^31 elements or more
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    rs = tl.zeros((BM,), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a_off = rm[:, None] * s_am + kk[None, :] * s_ak
        a_msk = (rm[:, None] < M) & (kk[None, :] < K)
        a = tl.load(a_ptr + a_off, mask=a_msk, other=0.0).to(tl.float32)
        if HAS_A2:  # the prologue: dp = g * x0 exists only in registers
            a = a * tl.load(a2_ptr + a_off, mask=a_msk, other=0.0).to(tl.float32)
        if ROWSUM:
            rs += tl.sum(a, 1)
        b = tl.load(b_ptr + kk[:, None] * s_bk + rn[None, :] * s_bn, mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        if LOW_PRECISION_DOT:
            acc = tl.dot(a.to(b.dtype), b, acc=acc)
        else:
            acc = tl.dot(a, b.to(tl.float32), acc=acc, input_precision="ieee")
    c_off = rm[:, None] * s_cm + rn[None, :]  # c, p, mul, add, aux: rows of unit column stride
    c_msk = (rm[:, None] < M) & (rn[None, :] < N)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if STORE_P:
        tl.store(p_ptr + c_off, acc.to(p_ptr.dtype.element_ty), mask=c_msk)
    if HAS_MUL:
        acc = acc * tl.load(mul_ptr + c_off, mask=c_msk, other=0.0).to(tl.float32)
    if HAS_ADD:
        acc += tl.load(add_ptr + c_off, mask=c_msk, other=0.0).to(tl.float32)
    tl.store(c_ptr + c_off, acc.to(c_ptr.dtype.element_ty), mask=c_msk)
    if HAS_AUX:
        x = tl.load(aux1_ptr + c_off, mask=c_msk, other=0.0).to(tl.float32)
        y = tl.load(aux2_ptr + c_off, mask=c_msk, other=0.0).to(tl.float32)
        tl.store(aux_ptr + c_off, (x * y).to(aux_ptr.dtype.element_ty), mask=c_msk)
    if ROWSUM:
        if pid_n == 0:
            tl.store(rowsum_ptr + rm, rs, mask=rm < M)


def _config():
    if triton_interpreting():  # every program instance costs ~0.5 ms: few, large-ish tiles
        return dict(BM=32, BN=64, BK=32, num_warps=4, num_stages=1)
    return dict(BM=128, BN=128, BK=32, num_warps=8, num_stages=3)


def _gemm(a, a_strides, b, b_strides, c, M, N, K, *, a2=None, bias=None, mul=None, add=None, p=None,
          aux=None, rowsum=None):
    """c[M, N] (contiguous) = epilogue((a * a2) @ b) with a, b addressed by (row, k) / (k, col) strides.

    mul / add / p / aux tensors share c's [M, N] contiguous layout; aux = (x, y, out) stores out = x * y.
    """
    for t in (a, b, c, a2, mul, add, p):
        if t is not None and t.numel() >= 2**31:
            raise ValueError(f"rankops cross (triton): tensors of 2^31 elements or more are not supported, got {tuple(t.shape)}")
    # the epilogue addresses c and its companions as contiguous rows (no column stride: a [BM, BN]
    # multiply fewer, which kept the kernel under 255 registers with triton 3.6's sm_90 code)
    for t in (c, mul, add, p, *(aux or ())):
        if t is not None and not (t.is_contiguous() and t.shape == c.shape):
            raise ValueError(f"rankops cross (triton): epilogue tensors must be contiguous [{M}, {N}], "
                             f"got {tuple(t.shape)} with strides {t.stride()}")
    cfg = _config()
    BM, BN, BK = cfg.pop("BM"), cfg.pop("BN"), cfg.pop("BK")
    dummy = c
    aux1, aux2, aux_out = aux if aux is not None else (dummy, dummy, dummy)
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    low = (not triton_interpreting()) and b.dtype in (torch.float16, torch.bfloat16)
    _gemm_kernel[grid](
        a, a2 if a2 is not None else dummy, b,
        bias if bias is not None else dummy, mul if mul is not None else dummy, add if add is not None else dummy,
        c, p if p is not None else dummy, aux1, aux2, aux_out, rowsum if rowsum is not None else dummy,
        M, N, K,
        a_strides[0], a_strides[1], b_strides[0], b_strides[1], c.stride(0),
        HAS_A2=a2 is not None, HAS_BIAS=bias is not None, HAS_MUL=mul is not None, HAS_ADD=add is not None,
        STORE_P=p is not None, HAS_AUX=aux is not None, ROWSUM=rowsum is not None, LOW_PRECISION_DOT=low,
        BM=BM, BN=BN, BK=BK, **cfg,
    )
    return c


# ---------------------------------------------------------------------------------------------
# full rank


def cross_layer(x0, xl, weight, bias, save):
    B, N = x0.shape
    out = torch.empty_like(x0)
    p = torch.empty_like(x0) if save else None
    if out.numel():
        # A = xl [B, N] (row stride N); Bm = W.T: Bm[k, n] = W[n, k]
        _gemm(xl, (N, 1), weight, (1, N), out, B, N, N, bias=bias, mul=x0, add=xl, p=p)
    return out, (p if save else x0.new_empty(0))


def cross_layer_backward(grad, x0, xl, weight, p):
    B, N = x0.shape
    grad = grad.to(x0.dtype)
    dx0, dxl = torch.empty_like(x0), torch.empty_like(xl)
    dw = torch.empty_like(weight)
    db = torch.zeros(N, dtype=torch.float32, device=x0.device)
    if B and N:
        # dxl = (g * x0) @ W + g; the same tiles give dx0 = g * p
        _gemm(grad, (N, 1), weight, (N, 1), dxl, B, N, N, a2=x0, add=grad, aux=(grad, p, dx0))
        # dW = (g * x0).T @ xl: A[n, b] = dp[b, n]; row sums of A are db
        _gemm(grad, (1, N), xl, (N, 1), dw, N, N, B, a2=x0, rowsum=db)
    else:
        dx0.zero_(), dxl.copy_(grad), dw.zero_()
    return dx0, dxl, dw, db.to(weight.dtype)


# ---------------------------------------------------------------------------------------------
# L stacked full-rank layers: the per-layer kernels in turn, the saved activations copied into
# cross_net's padded layout (one extra write of x_l and p_l per layer; a stacked GPU kernel would
# write them in place)


def cross_net(x0, weight, bias, save):
    from rankops.ops.cross import row_stride

    (B, N), L = x0.shape, weight.shape[0]
    xs = x0.new_zeros(L - 1, B, row_stride(N)) if save else x0.new_empty(0)
    ps = x0.new_zeros(L, B, row_stride(N)) if save else x0.new_empty(0)
    x = x0
    for l in range(L):
        out, p = cross_layer(x0, x, weight[l], bias[l], save)
        if save:
            ps[l, :, :N] = p
            if l < L - 1:
                xs[l, :, :N] = out
        x = out
    return x, xs, ps


def cross_net_backward(grad, x0, weight, xs, ps):
    (B, N), L = x0.shape, weight.shape[0]
    g = grad.to(x0.dtype)
    dx0 = torch.zeros(B, N, dtype=torch.float32, device=x0.device)
    dw, db = torch.empty_like(weight), weight.new_empty(L, N)
    for l in reversed(range(L)):
        xl = x0 if l == 0 else xs[l - 1, :, :N].contiguous()
        d0, g, dw[l], db[l] = cross_layer_backward(g, x0, xl, weight[l], ps[l, :, :N].contiguous())
        dx0 += d0.float()
    return (dx0 + g.float()).to(x0.dtype), dw, db


# ---------------------------------------------------------------------------------------------
# low rank


def cross_layer_lowrank(x0, xl, u, v, bias, save):
    B, N = x0.shape
    r = u.shape[1]
    out = torch.empty_like(x0)
    t = x0.new_empty(B, r)
    p = torch.empty_like(x0) if save else None
    if out.numel():
        _gemm(xl, (N, 1), v, (1, N), t, B, r, N)  # t = xl @ v.T
        _gemm(t, (r, 1), u, (1, r), out, B, N, r, bias=bias, mul=x0, add=xl, p=p)  # x0 * (t @ u.T + b) + xl
    if not save:
        return out, x0.new_empty(0), x0.new_empty(0)
    return out, t, p


def cross_layer_lowrank_backward(grad, x0, xl, u, v, t, p):
    B, N = x0.shape
    r = u.shape[1]
    grad = grad.to(x0.dtype)
    dx0, dxl = torch.empty_like(x0), torch.empty_like(xl)
    du, dv = torch.empty_like(u), torch.empty_like(v)
    db = torch.zeros(N, dtype=torch.float32, device=x0.device)
    if B and N:
        dt = torch.empty(B, r, dtype=torch.float32, device=x0.device)  # [B, r]: small, kept in fp32
        _gemm(grad, (1, N), t, (r, 1), du, N, r, B, a2=x0, rowsum=db)  # du = dp.T @ t, db
        _gemm(grad, (N, 1), u, (r, 1), dt, B, r, N, a2=x0)  # dt = dp @ u
        _gemm(dt, (1, r), xl, (N, 1), dv, r, N, B)  # dv = dt.T @ xl
        _gemm(dt, (r, 1), v, (N, 1), dxl, B, N, r, add=grad, aux=(grad, p, dx0))  # dxl = dt @ v + g, dx0
    else:
        dx0.zero_(), dxl.copy_(grad), du.zero_(), dv.zero_()
    return dx0, dxl, du, dv, db.to(u.dtype)


# ---------------------------------------------------------------------------------------------
# v1: a dot product per row, no GEMM


@triton.jit
def _v1_fwd_kernel(x0_ptr, xl_ptr, w_ptr, bias_ptr, out_ptr, B, N, BM: tl.constexpr, BN: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    rm = pid * BM + tl.arange(0, BM)
    s = tl.zeros((BM,), dtype=tl.float32)
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        msk = (rm[:, None] < B) & (rn[None, :] < N)
        xl = tl.load(xl_ptr + rm[:, None] * N + rn[None, :], mask=msk, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        s += tl.sum(xl * w[None, :], 1)
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        off = rm[:, None] * N + rn[None, :]
        msk = (rm[:, None] < B) & (rn[None, :] < N)
        x0 = tl.load(x0_ptr + off, mask=msk, other=0.0).to(tl.float32)
        xl = tl.load(xl_ptr + off, mask=msk, other=0.0).to(tl.float32)
        b = tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        tl.store(out_ptr + off, (x0 * s[:, None] + b[None, :] + xl).to(out_ptr.dtype.element_ty), mask=msk)


@triton.jit
def _v1_bwd_kernel(g_ptr, x0_ptr, xl_ptr, w_ptr, dx0_ptr, dxl_ptr, dw_part_ptr, db_part_ptr, B, N,
                   BM: tl.constexpr, BN: tl.constexpr):
    # per row: s = xl . w, ds = g . x0; dx0 = g * s, dxl = ds * w + g; this block's partial
    # column sums of ds * xl (dw) and g (db) go to row `pid` of the partial buffers
    pid = tl.program_id(0).to(tl.int64)
    rm = pid * BM + tl.arange(0, BM)
    s = tl.zeros((BM,), dtype=tl.float32)
    ds = tl.zeros((BM,), dtype=tl.float32)
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        off = rm[:, None] * N + rn[None, :]
        msk = (rm[:, None] < B) & (rn[None, :] < N)
        xl = tl.load(xl_ptr + off, mask=msk, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + off, mask=msk, other=0.0).to(tl.float32)
        x0 = tl.load(x0_ptr + off, mask=msk, other=0.0).to(tl.float32)
        s += tl.sum(xl * w[None, :], 1)
        ds += tl.sum(g * x0, 1)
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        off = rm[:, None] * N + rn[None, :]
        msk = (rm[:, None] < B) & (rn[None, :] < N)
        xl = tl.load(xl_ptr + off, mask=msk, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + off, mask=msk, other=0.0).to(tl.float32)
        tl.store(dx0_ptr + off, (g * s[:, None]).to(dx0_ptr.dtype.element_ty), mask=msk)
        tl.store(dxl_ptr + off, (ds[:, None] * w[None, :] + g).to(dxl_ptr.dtype.element_ty), mask=msk)
        tl.store(dw_part_ptr + pid * N + rn, tl.sum(ds[:, None] * xl, 0), mask=rn < N)
        tl.store(db_part_ptr + pid * N + rn, tl.sum(g, 0), mask=rn < N)


def _v1_blocks():
    return (32, 64) if triton_interpreting() else (16, 256)


def cross_layer_v1(x0, xl, w, bias):
    B, N = x0.shape
    out = torch.empty_like(x0)
    if out.numel():
        BM, BN = _v1_blocks()
        _v1_fwd_kernel[(triton.cdiv(B, BM),)](x0, xl, w, bias, out, B, N, BM=BM, BN=BN)
    return out


def cross_layer_v1_backward(grad, x0, xl, w):
    B, N = x0.shape
    grad = grad.to(x0.dtype)
    dx0, dxl = torch.empty_like(x0), torch.empty_like(xl)
    BM, BN = _v1_blocks()
    nb = triton.cdiv(B, BM)
    dw_part = torch.zeros(max(nb, 1), N, dtype=torch.float32, device=x0.device)
    db_part = torch.zeros_like(dw_part)
    if B and N:
        _v1_bwd_kernel[(nb,)](grad, x0, xl, w, dx0, dxl, dw_part, db_part, B, N, BM=BM, BN=BN)
    return dx0, dxl, dw_part.sum(0).to(w.dtype), db_part.sum(0).to(w.dtype)


# ---------------------------------------------------------------------------------------------
# v1 and low-rank stacks: the layer kernels above, composed (reference.net_*). On a GPU each v1
# layer is one memory-bound pass; a fused stack kernel is future work, measured first.


def cross_net_v1(x0, w, bias):
    return _reference.net_v1(cross_layer_v1, x0, w, bias)


def cross_net_v1_backward(grad, x0, w, bias):
    return _reference.net_v1_backward(cross_layer_v1, cross_layer_v1_backward, grad.to(x0.dtype), x0, w, bias)


def cross_net_lowrank(x0, u, v, bias, save):
    return _reference.net_lowrank(cross_layer_lowrank, x0, u, v, bias, save)


def cross_net_lowrank_backward(grad, x0, u, v, xs, ts, ps):
    return _reference.net_lowrank_backward(cross_layer_lowrank_backward, grad.to(x0.dtype), x0, u, v, xs, ts, ps)
