"""Triton kernels for the CIN layer: a GEMM over the rows r = (b, d) whose A operand, the outer
product Z[r, (h, i)] = xk[b, h, d] * x0[b, i, d], is formed tile by tile in registers.

    forward   out[r, n] = sum_k Z[r, k] W2[n, k] + bias[n]              (grid: rows x maps)
    backward  dW2[n, k] = sum_r G[r, n] Z[r, k],  db[n] = sum_r G[r, n]  (grid: maps x k; Z again in registers)
              dxk[r, h] = sum_{n,i} G[r, n] x0[r, i] W[n, h, i]   = the forward kernel on (G, x0, W permuted)
              dx0[r, i] = sum_{n,h} G[r, n] xk[r, h] W[n, h, i]   = the forward kernel on (G, xk, W permuted)

The two input gradients are CIN layers themselves (the product of G with x0, or with xk, is again an
outer product over the rows), so the backward reuses the forward kernel through strided views of W
and never forms Z or dZ. That costs three GEMMs of the forward's size instead of two (a dZ tile
reduced over i would need the K tile to cover whole h's, awkward with M = 39 and power-of-two
tiles); it keeps one kernel to tune.

The weight is addressed through strides (n, h, i), so the permuted views cost nothing. Accumulation
is fp32; on a GPU the dot runs in bf16/fp16 for those inputs, under the interpreter in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rankops.backend import triton_interpreting


@triton.jit
def _cin_fwd_kernel(
    xk_ptr, x0_ptr, w_ptr, bias_ptr, out_ptr,
    R, D, M, Hn, K,
    s_kb, s_kh, s_kd, s_0b, s_0i, s_0d, s_wn, s_wh, s_wi, s_ob, s_on, s_od,
    HAS_BIAS: tl.constexpr, LOW_PRECISION_DOT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    # int32 offsets (see _launch_fwd): int64 ones made the gathered A tile spill on sm_90
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    r = pid_m * BM + tl.arange(0, BM)
    b = r // D
    d = r % D
    n = pid_n * BN + tl.arange(0, BN)
    r_ok = r < R
    xk_row = b * s_kb + d * s_kd
    x0_row = b * s_0b + d * s_0d
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        h = k // M
        i = k % M
        a_msk = r_ok[:, None] & (k[None, :] < K)
        # A tile of the outer product, formed in registers from two gathers that hit L1/L2
        a = tl.load(xk_ptr + xk_row[:, None] + h[None, :] * s_kh, mask=a_msk, other=0.0).to(tl.float32)
        a = a * tl.load(x0_ptr + x0_row[:, None] + i[None, :] * s_0i, mask=a_msk, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + n[None, :] * s_wn + h[:, None] * s_wh + i[:, None] * s_wi,
                    mask=(k[:, None] < K) & (n[None, :] < Hn), other=0.0)
        if LOW_PRECISION_DOT:
            acc = tl.dot(a.to(w.dtype), w, acc=acc)
        else:
            acc = tl.dot(a, w.to(tl.float32), acc=acc, input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=n < Hn, other=0.0).to(tl.float32)[None, :]
    o = out_ptr + (b * s_ob + d * s_od)[:, None] + n[None, :] * s_on
    tl.store(o, acc.to(out_ptr.dtype.element_ty), mask=r_ok[:, None] & (n[None, :] < Hn))


@triton.jit
def _cin_dw_kernel(
    g_ptr, xk_ptr, x0_ptr, dw_ptr, db_ptr,
    R, D, M, Hn, K,
    s_gb, s_gn, s_gd, s_kb, s_kh, s_kd, s_0b, s_0i, s_0d,
    LOW_PRECISION_DOT: tl.constexpr,
    BN: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr,
):
    # dW2[n, k] = sum_r G[r, n] Z[r, k]; the programs of the first k column also sum G for db
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    n = pid_n * BN + tl.arange(0, BN)
    k = pid_k * BK + tl.arange(0, BK)
    h = k // M
    i = k % M
    acc = tl.zeros((BN, BK), dtype=tl.float32)
    gs = tl.zeros((BN,), dtype=tl.float32)
    for r0 in range(0, R, BR):
        r = r0 + tl.arange(0, BR)
        b = r // D
        d = r % D
        r_ok = r < R
        gt = tl.load(g_ptr + n[:, None] * s_gn + (b * s_gb + d * s_gd)[None, :],
                     mask=(n[:, None] < Hn) & r_ok[None, :], other=0.0)
        z_msk = r_ok[:, None] & (k[None, :] < K)
        z = tl.load(xk_ptr + (b * s_kb + d * s_kd)[:, None] + h[None, :] * s_kh, mask=z_msk, other=0.0).to(tl.float32)
        z = z * tl.load(x0_ptr + (b * s_0b + d * s_0d)[:, None] + i[None, :] * s_0i, mask=z_msk, other=0.0).to(tl.float32)
        if pid_k == 0:
            gs += tl.sum(gt.to(tl.float32), 1)
        if LOW_PRECISION_DOT:
            acc = tl.dot(gt, z.to(gt.dtype), acc=acc)
        else:
            acc = tl.dot(gt.to(tl.float32), z, acc=acc, input_precision="ieee")
    tl.store(dw_ptr + n[:, None] * K + k[None, :], acc.to(dw_ptr.dtype.element_ty),
             mask=(n[:, None] < Hn) & (k[None, :] < K))
    if pid_k == 0:
        tl.store(db_ptr + n, gs, mask=n < Hn)


def _check_int32(*ts) -> None:
    # the kernels index with int32 (int64 address tiles cost registers and spilled on sm_90)
    for t in ts:
        if t.numel() >= 2**31:
            raise ValueError(f"rankops.cin_layer (triton): tensors of 2^31 elements or more are not supported, got "
                             f"{tuple(t.shape)}")


def _low(dtype) -> bool:
    return (not triton_interpreting()) and dtype in (torch.float16, torch.bfloat16)


def _fwd_config():
    if triton_interpreting():
        return dict(BM=64, BN=32, BK=32, num_warps=4, num_stages=1)
    return dict(BM=128, BN=128, BK=32, num_warps=8, num_stages=3)


def _launch_fwd(xk, x0, w_strides, w, Hn, H, M, bias, out):
    """out[b, n, d] = sum_{h,i} W(n, h, i) xk[b,h,d] x0[b,i,d] (+ bias), W addressed by w_strides."""
    B, _, D = xk.shape
    R, K = B * D, H * M
    _check_int32(xk, x0, out)
    cfg = _fwd_config()
    BM, BN, BK = cfg.pop("BM"), cfg.pop("BN"), cfg.pop("BK")
    grid = (triton.cdiv(R, BM), triton.cdiv(Hn, BN))
    _cin_fwd_kernel[grid](
        xk, x0, w, bias if bias is not None else out, out,
        R, D, M, Hn, K,
        *xk.stride(), *x0.stride(), *w_strides, *out.stride(),
        HAS_BIAS=bias is not None, LOW_PRECISION_DOT=_low(xk.dtype), BM=BM, BN=BN, BK=BK, **cfg,
    )
    return out


def cin_layer(xk, x0, weight, bias):
    B, H, D = xk.shape
    M, Hn = x0.shape[1], weight.shape[0]
    out = xk.new_empty(B, Hn, D)
    if out.numel() == 0:
        return out
    if H * M == 0:
        return out.zero_() + (0 if bias is None else bias[None, :, None])
    return _launch_fwd(xk, x0, weight.stride(), weight, Hn, H, M, bias, out)


def cin_layer_backward(grad, xk, x0, weight):
    B, H, D = xk.shape
    M, Hn = x0.shape[1], weight.shape[0]
    grad = grad.to(xk.dtype)
    dxk, dx0 = torch.empty_like(xk), torch.empty_like(x0)
    dw = torch.empty_like(weight)
    db = torch.zeros(Hn, dtype=torch.float32, device=xk.device)
    R, K = B * D, H * M
    if R == 0 or K == 0:
        return dxk.zero_(), dx0.zero_(), dw.zero_(), grad.float().sum((0, 2)).to(weight.dtype)
    sn, sh, si = weight.stride()
    # dxk[b,h,d] = sum_{n,i} W[n,h,i] G[b,n,d] x0[b,i,d]: a CIN layer with maps h over the pairs (n, i)
    _launch_fwd(grad, x0, (sh, sn, si), weight, H, Hn, M, None, dxk)
    # dx0[b,i,d] = sum_{n,h} W[n,h,i] G[b,n,d] xk[b,h,d]: maps i over the pairs (n, h)
    _launch_fwd(grad, xk, (si, sn, sh), weight, M, Hn, H, None, dx0)
    if triton_interpreting():
        BN, BK, BR, cfg = 32, 32, 64, dict(num_warps=4, num_stages=1)
    else:
        BN, BK, BR, cfg = 128, 64, 32, dict(num_warps=8, num_stages=3)
    grid = (triton.cdiv(Hn, BN), triton.cdiv(K, BK))
    _cin_dw_kernel[grid](
        grad, xk, x0, dw, db, R, D, M, Hn, K,
        *grad.stride(), *xk.stride(), *x0.stride(),
        LOW_PRECISION_DOT=_low(xk.dtype), BN=BN, BK=BK, BR=BR, **cfg,
    )
    return dxk, dx0, dw, db.to(weight.dtype)
