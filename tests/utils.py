"""Helpers shared by the op tests: which (backend, device) pairs run here, per-dtype tolerances,
and an allclose that says how many elements differ, where, and by how much."""

from __future__ import annotations

import contextlib

import pytest
import torch

import rankops
from rankops import backend as _backend

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (atol, rtol) of a kernel against the fp32 reference, per input dtype. Kernels accumulate in fp32,
# so the error is the rounding of inputs/outputs to the dtype plus reordered fp32 sums.
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (6e-2, 2e-2),
}


def backend_devices(*backends: str):
    """pytest params (backend, device) for every kernel backend; GPU ones are marked `gpu`."""
    params = []
    for b in backends:
        if b in ("cpp",):
            params.append(pytest.param(b, "cpu", id=f"{b}-cpu"))
        if b == "triton":
            params.append(pytest.param(b, "cpu", id="triton-interpret", marks=pytest.mark.skipif(
                torch.cuda.is_available(), reason="on a GPU machine Triton runs for real (triton-cuda)")))
        if b in ("cuda", "triton"):
            params.append(pytest.param(b, "cuda", id=f"{b}-cuda", marks=pytest.mark.gpu))
        if b == "reference":
            params.append(pytest.param(b, "cpu", id="reference-cpu"))
    return params


def require(backend: str, device: str) -> None:
    """Fail (not skip) when a backend that should be here is not: a missing build is a bug."""
    why = _backend.why_unavailable(backend, device)
    if why:
        pytest.fail(f"backend {backend} on {device} unavailable: {why}")


@contextlib.contextmanager
def on(backend: str, device: str):
    require(backend, device)
    with rankops.use_backend(backend):
        yield


def tol(dtype: torch.dtype, scale: float = 1.0) -> dict:
    atol, rtol = TOL[dtype]
    return dict(atol=atol * scale, rtol=rtol * scale)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, name: str = "") -> None:
    """allclose in fp32 that reports the count, the worst element and NaN/Inf mismatches."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    nan_a, nan_e = ~torch.isfinite(a), ~torch.isfinite(e)
    assert torch.equal(nan_a, nan_e), f"{name}: non-finite mismatch at {torch.nonzero(nan_a ^ nan_e)[:5].tolist()}"
    a, e = a.masked_fill(nan_a, 0), e.masked_fill(nan_e, 0)
    err = (a - e).abs()
    bad = err > atol + rtol * e.abs()
    if bad.any():
        idx = torch.nonzero(bad)
        worst = tuple(torch.nonzero(err == err.max())[0].tolist())
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{a.numel()} elements differ (atol={atol}, rtol={rtol}); first at "
            f"{idx[0].tolist()}; worst at {list(worst)}: got {a[worst].item():.6g}, expected {e[worst].item():.6g}"
        )
