"""rankops against FBGEMM's CPU TBE (fbgemm-gpu-cpu, installed by scripts/bootstrap.sh): the same
pooled output, and the same tables and row-wise Adagrad state after fused training steps."""

from __future__ import annotations

import pytest
import torch

import rankops
from bench.embedding_bag import fbgemm_tbe
from rankops.ops.embedding_bag import FusedOptimizer, fused_batched_embedding_bag
from tests.utils import assert_close

fbgemm = pytest.importorskip("fbgemm_gpu", reason="fbgemm-gpu-cpu is installed by scripts/bootstrap.sh")


def test_rowwise_adagrad_steps_match_fbgemm():
    T, R, D, B = 26, 50, 8, 16  # the bench's 26 tables, small
    g = torch.Generator().manual_seed(0)
    ours_w = torch.empty(T * R, D).uniform_(-0.1, 0.1, generator=g)
    theirs_w = ours_w.clone()
    tbe = fbgemm_tbe(theirs_w, R, D, "rowwise_adagrad")
    opt = FusedOptimizer("rowwise_adagrad", lr=0.01, eps=1e-8)
    state = opt.init_state(ours_w)
    toff = torch.arange(0, (T + 1) * R, R)
    for step in range(3):
        lengths = torch.randint(0, 5, (T * B,), generator=g)
        off = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        idx = torch.randint(0, R, (int(off[-1]),), generator=g)
        grad = torch.randn(B, T * D, generator=g)
        with rankops.use_backend("cpp"):
            out = fused_batched_embedding_bag(ours_w, state, toff, idx, off, optimizer=opt)
        theirs = tbe(idx, off)
        assert_close(out.reshape(B, -1), theirs, 1e-6, 1e-6, f"step {step} forward")
        out.reshape(B, -1).backward(grad)
        theirs.backward(grad)
        assert_close(ours_w, theirs_w, 1e-6, 1e-6, f"step {step} weights")
    assert_close(state, tbe.momentum1_host, 1e-6, 1e-6, "row-wise state")
