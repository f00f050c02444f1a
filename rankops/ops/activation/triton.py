"""Triton kernels for Dice on batch statistics (GPU; CPU tensors only under TRITON_INTERPRET=1).

    forward   moments(x, c = 0) -> mean;  moments(x, c = mean) -> var  (two passes, no cancellation);
              gate: y = x (alpha + (1 - alpha) sigmoid(w (x - mean) r + b))
    backward  sums: S1 = sum gu, Sz = sum gu z, Sa = sum g x (1 - p) over every row (dbias, dweight, dalpha);
              grad: dx = g (alpha + (1 - alpha) p) + w r gu - [valid] w r / n (S1 + z Sz)

The column sums are per (row chunk, column block) program, written as fp32 partials and added by
torch in a fixed order: deterministic, no atomics. Nothing waits on the host (the valid count stays
on the device). The formulas are reference.py's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rankops.backend import triton_interpreting


@triton.jit
def _moments_kernel(x_ptr, m_ptr, c_ptr, part_ptr, N, H, rows_per, BR: tl.constexpr, BH: tl.constexpr):
    # partial sums over one chunk of rows of m (x - c) and m (x - c)^2, one block of columns
    pid_r = tl.program_id(0)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    cok = cols < H
    c = tl.load(c_ptr + cols, mask=cok, other=0.0)
    s1 = tl.zeros((BH,), dtype=tl.float32)
    s2 = tl.zeros((BH,), dtype=tl.float32)
    r0 = pid_r * rows_per
    for r in range(r0, r0 + rows_per, BR):
        rows = r + tl.arange(0, BR)
        rok = rows < N
        m = tl.load(m_ptr + rows, mask=rok, other=0).to(tl.float32)
        x = tl.load(x_ptr + rows[:, None] * H + cols[None, :], mask=rok[:, None] & cok[None, :], other=0.0)
        xc = x.to(tl.float32) - c[None, :]
        mxc = xc * m[:, None]
        s1 += tl.sum(mxc, 0)
        s2 += tl.sum(mxc * xc, 0)
    tl.store(part_ptr + pid_r * 2 * H + cols, s1, mask=cok)
    tl.store(part_ptr + pid_r * 2 * H + H + cols, s2, mask=cok)


@triton.jit
def _gate_kernel(x_ptr, mean_ptr, wr_ptr, b_ptr, alpha_ptr, y_ptr, N, H, BR: tl.constexpr, BH: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    cok = cols < H
    ok = (rows < N)[:, None] & cok[None, :]
    x = tl.load(x_ptr + rows[:, None] * H + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + cols, mask=cok, other=0.0)
    wr = tl.load(wr_ptr + cols, mask=cok, other=0.0)
    b = tl.load(b_ptr + cols, mask=cok, other=0.0)
    a = tl.load(alpha_ptr + cols, mask=cok, other=0.0).to(tl.float32)
    p = tl.sigmoid((x - mean[None, :]) * wr[None, :] + b[None, :])
    y = x * (a[None, :] + (1.0 - a[None, :]) * p)
    tl.store(y_ptr + rows[:, None] * H + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _backward_sums_kernel(g_ptr, x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, alpha_ptr, part_ptr, N, H, rows_per,
                          BR: tl.constexpr, BH: tl.constexpr):
    pid_r = tl.program_id(0)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    cok = cols < H
    mean = tl.load(mean_ptr + cols, mask=cok, other=0.0)
    rstd = tl.load(rstd_ptr + cols, mask=cok, other=0.0)
    w = tl.load(w_ptr + cols, mask=cok, other=0.0)
    b = tl.load(b_ptr + cols, mask=cok, other=0.0)
    a = tl.load(alpha_ptr + cols, mask=cok, other=0.0).to(tl.float32)
    s1 = tl.zeros((BH,), dtype=tl.float32)
    sz = tl.zeros((BH,), dtype=tl.float32)
    sa = tl.zeros((BH,), dtype=tl.float32)
    r0 = pid_r * rows_per
    for r in range(r0, r0 + rows_per, BR):
        rows = r + tl.arange(0, BR)
        ok = (rows < N)[:, None] & cok[None, :]
        offs = rows[:, None] * H + cols[None, :]
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        z = (x - mean[None, :]) * rstd[None, :]
        p = tl.sigmoid(z * w[None, :] + b[None, :])
        gx = g * x
        gu = gx * (1.0 - a[None, :]) * p * (1.0 - p)
        s1 += tl.sum(gu, 0)
        sz += tl.sum(gu * z, 0)
        sa += tl.sum(gx * (1.0 - p), 0)
    base = part_ptr + pid_r * 3 * H + cols
    tl.store(base, s1, mask=cok)
    tl.store(base + H, sz, mask=cok)
    tl.store(base + 2 * H, sa, mask=cok)


@triton.jit
def _backward_kernel(g_ptr, x_ptr, m_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, alpha_ptr, c1_ptr, cz_ptr, dx_ptr, N, H,
                     BR: tl.constexpr, BH: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    rok = rows < N
    cok = cols < H
    ok = rok[:, None] & cok[None, :]
    offs = rows[:, None] * H + cols[None, :]
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    valid = tl.load(m_ptr + rows, mask=rok, other=0).to(tl.float32)
    mean = tl.load(mean_ptr + cols, mask=cok, other=0.0)
    rstd = tl.load(rstd_ptr + cols, mask=cok, other=0.0)
    w = tl.load(w_ptr + cols, mask=cok, other=0.0)
    b = tl.load(b_ptr + cols, mask=cok, other=0.0)
    a = tl.load(alpha_ptr + cols, mask=cok, other=0.0).to(tl.float32)
    c1 = tl.load(c1_ptr + cols, mask=cok, other=0.0)
    cz = tl.load(cz_ptr + cols, mask=cok, other=0.0)
    z = (x - mean[None, :]) * rstd[None, :]
    p = tl.sigmoid(z * w[None, :] + b[None, :])
    gu = g * x * (1.0 - a[None, :]) * p * (1.0 - p)
    dx = g * (a[None, :] + (1.0 - a[None, :]) * p) + (w * rstd)[None, :] * gu \
        - valid[:, None] * (c1[None, :] + z * cz[None, :])
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=ok)


def _plan(N: int, H: int) -> tuple[int, int, int, int]:
    """(BR, BH, rows per reduction program, reduction programs along the rows)."""
    BH = min(triton.next_power_of_2(max(H, 1)), 64)
    BR = 64 if triton_interpreting() else 32
    chunks = max(1, min(triton.cdiv(N, BR), 4 if triton_interpreting() else 512))
    rows_per = triton.cdiv(triton.cdiv(N, chunks), BR) * BR
    return BR, BH, rows_per, triton.cdiv(N, rows_per) if N else 1


def _column_sums(kernel, width: int, N: int, H: int, device, *args) -> torch.Tensor:
    BR, BH, rows_per, chunks = _plan(N, H)
    part = torch.zeros(chunks, width, H, dtype=torch.float32, device=device)
    kernel[(chunks, triton.cdiv(H, BH))](*args, part, N, H, rows_per, BR=BR, BH=BH)
    return part.sum(0)  # [width, H], in chunk order


def dice(x: torch.Tensor, mask: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
         eps: float):
    N, H = x.shape
    m = mask.view(torch.uint8)
    n = mask.sum().clamp_min(1).to(torch.float32)  # on the device: no host sync
    zeros = torch.zeros(H, dtype=torch.float32, device=x.device)
    mean = _column_sums(_moments_kernel, 2, N, H, x.device, x, m, zeros)[0] / n
    var = (_column_sums(_moments_kernel, 2, N, H, x.device, x, m, mean)[1] / n).clamp_min(0.0)
    wr = torch.rsqrt(var + eps) * weight.float()
    y = torch.empty_like(x)
    if x.numel():
        BR, BH, _, _ = _plan(N, H)
        _gate_kernel[(triton.cdiv(N, BR), triton.cdiv(H, BH))](x, mean, wr, bias.float().contiguous(), alpha, y, N, H,
                                                               BR=BR, BH=BH)
    return y, mean, var


def dice_backward(grad, x, mask, alpha, weight, bias, mean, var, eps):
    N, H = x.shape
    m = mask.view(torch.uint8)
    n = mask.sum().clamp_min(1).to(torch.float32)
    mean = mean.float().contiguous()
    rstd = torch.rsqrt(var.float() + eps)
    w, b = weight.float().contiguous(), bias.float().contiguous()
    sums = _column_sums(_backward_sums_kernel, 3, N, H, x.device, grad, x, mean, rstd, w, b, alpha)
    c1, cz = w * rstd * sums[0] / n, w * rstd * sums[1] / n
    dx = torch.empty_like(x)
    if x.numel():
        BR, BH, _, _ = _plan(N, H)
        _backward_kernel[(triton.cdiv(N, BR), triton.cdiv(H, BH))](grad, x, m, mean, rstd, w, b, alpha, c1, cz, dx,
                                                                   N, H, BR=BR, BH=BH)
    return dx, sums[2].to(alpha.dtype), sums[1].to(weight.dtype), sums[0].to(bias.dtype)


def aot_specs() -> list[dict]:
    """The four kernels at DIN's widths (80 and 40 hidden units, B*L = 51200 rows) per dtype, for
    scripts/gpu_report.py (sm_90a registers and spills without a GPU)."""
    from rankops.ops import _aot

    specs = []
    N = 51200
    for dtype, t in _aot.SIG.items():
        p = "*" + t
        for H in (80, 40):
            BR, BH, rows_per = 32, min(triton.next_power_of_2(H), 64), 128
            dims = [("N", "i32", N), ("H", "i32", H)]
            cx = dict(BR=BR, BH=BH)
            specs += [
                _aot.spec(_moments_kernel, f"{t} H={H}", [("x_ptr", p, None), ("m_ptr", "*u8", None),
                          ("c_ptr", "*fp32", None), ("part_ptr", "*fp32", None)] + dims
                          + [("rows_per", "i32", rows_per)], cx),
                _aot.spec(_gate_kernel, f"{t} H={H}", [("x_ptr", p, None), ("mean_ptr", "*fp32", None),
                          ("wr_ptr", "*fp32", None), ("b_ptr", "*fp32", None), ("alpha_ptr", p, None),
                          ("y_ptr", p, None)] + dims, cx),
                _aot.spec(_backward_sums_kernel, f"{t} H={H}", [("g_ptr", p, None), ("x_ptr", p, None),
                          ("mean_ptr", "*fp32", None), ("rstd_ptr", "*fp32", None), ("w_ptr", "*fp32", None),
                          ("b_ptr", "*fp32", None), ("alpha_ptr", p, None),
                          ("part_ptr", "*fp32", None)] + dims + [("rows_per", "i32", rows_per)], cx),
                _aot.spec(_backward_kernel, f"{t} H={H}", [("g_ptr", p, None), ("x_ptr", p, None),
                          ("m_ptr", "*u8", None), ("mean_ptr", "*fp32", None), ("rstd_ptr", "*fp32", None),
                          ("w_ptr", "*fp32", None), ("b_ptr", "*fp32", None),
                          ("alpha_ptr", p, None), ("c1_ptr", "*fp32", None), ("cz_ptr", "*fp32", None),
                          ("dx_ptr", p, None)] + dims, cx),
            ]
    return specs
