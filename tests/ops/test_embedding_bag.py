"""embedding_bag / batched_embedding_bag: every backend against torch.nn.functional.embedding_bag
(forward, weight and per-sample-weight gradients), the fused optimizers against torch.optim over
several steps, and the bad inputs (raised before anything is written)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import rankops
from rankops.ops.embedding_bag import (FusedOptimizer, batched_embedding_bag, embedding_bag,
                                       fused_batched_embedding_bag)
from tests.utils import DTYPES, assert_close, backend_devices, on, require, tol

BACKENDS = backend_devices("reference", "cpp", "triton", "cuda")
MODES = ["sum", "mean", "max"]


def make_case(rows, D, lengths_per_table, dtype=torch.float32, index_dtype=torch.int64, device="cpu", psw=False,
              seed=0, distinct=False):
    """T tables (``rows[t]`` rows each) stacked in one buffer, and table-major bags.

    ``lengths_per_table[t][b]`` is the length of bag b of table t. With ``distinct`` each column of
    every table holds distinct multiples of 1/256 (exact in fp16 and bf16), so max has no ties.
    """
    g = torch.Generator().manual_seed(seed)
    R = sum(rows)
    if distinct:
        w = torch.stack([torch.randperm(256, generator=g)[:R] for _ in range(D)], 1).float() / 256 - 0.5
    else:
        w = torch.randn(R, D, generator=g)
    T = len(rows)
    B = len(lengths_per_table[0])
    indices, lengths = [], []
    for t in range(T):
        for b in range(B):
            n = lengths_per_table[t][b]
            indices.append(torch.randint(0, rows[t], (n,), generator=g))
            lengths.append(n)
    indices = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64)
    offsets = torch.zeros(T * B + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    table_offsets = torch.zeros(T + 1, dtype=torch.int64)
    table_offsets[1:] = torch.cumsum(torch.tensor(rows), 0)
    p = torch.randn(indices.numel(), generator=g) if psw else None
    return dict(
        weights=w.to(dtype).to(device),
        table_offsets=table_offsets.to(device),
        indices=indices.to(index_dtype).to(device),
        offsets=offsets.to(index_dtype).to(device),
        psw=None if p is None else p.to(dtype).to(device),
        T=T, B=B,
    )


def torch_pooled(c, mode, weights=None, psw=None):
    """[B, T, D] fp32 via a loop of F.embedding_bag, one call per table."""
    w = (c["weights"] if weights is None else weights)
    to, off, idx = c["table_offsets"].long(), c["offsets"].long(), c["indices"].long()
    T, B = c["T"], c["B"]
    outs = []
    for t in range(T):
        o = off[t * B:(t + 1) * B + 1]
        ps = None if psw is None else psw[o[0]:o[-1]]
        outs.append(F.embedding_bag(idx[o[0]:o[-1]], w[to[t]:to[t + 1]], o - o[0], mode=mode,
                                    per_sample_weights=ps, include_last_offset=True))
    return torch.stack(outs, 1)


# bag lengths [T][B]: duplicates inside bags (tables of 1 and 3 rows), empty bags, long bags.
CASES = {
    "mixed": ([5, 1, 3, 40], 13, [[2, 0, 3, 1, 4], [1, 1, 0, 2, 3], [4, 3, 0, 0, 2], [6, 1, 2, 9, 0]]),
    "b1": ([7, 2], 16, [[3], [2]]),
    "all_empty": ([4, 3], 8, [[0, 0, 0], [0, 0, 0]]),
}


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_batched_matches_torch_fp32(backend, device, mode, case):
    rows, D, lengths = CASES[case]
    c = make_case(rows, D, lengths, device=device, distinct=(mode == "max"))
    _assert_matches_torch(c, mode, backend, device)


def _assert_matches_torch(c, mode, backend, device, grad_like=torch.randn_like):
    """fp32 output and weight gradient of ``backend`` against the loop of F.embedding_bag."""
    w = c["weights"].clone().requires_grad_()
    with on(backend, device):
        out = batched_embedding_bag(w, c["table_offsets"], c["indices"], c["offsets"], mode=mode)
        grad = grad_like(out)
        (gw,) = torch.autograd.grad(out, w, grad)
    wr = c["weights"].clone().requires_grad_()
    ref = torch_pooled(c, mode, wr)
    (gr,) = torch.autograd.grad(ref, wr, grad)
    assert_close(out, ref, **tol(torch.float32), name="out")
    assert_close(gw, gr, **tol(torch.float32), name="grad weights")


# every float dtype and both index dtypes, without the full product (interpreter time)
DTYPE_PAIRS = [(torch.float32, torch.int32), (torch.float16, torch.int32), (torch.bfloat16, torch.int64)]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype,index_dtype", DTYPE_PAIRS, ids=["fp32-i32", "fp16-i32", "bf16-i64"])
@pytest.mark.parametrize("mode", MODES)
def test_batched_dtypes(backend, device, dtype, index_dtype, mode):
    rows, D, lengths = CASES["mixed"]
    c = make_case(rows, D, lengths, dtype=dtype, index_dtype=index_dtype, device=device, distinct=(mode == "max"),
                  seed=1)
    w = c["weights"].clone().requires_grad_()
    with on(backend, device):
        out = batched_embedding_bag(w, c["table_offsets"], c["indices"], c["offsets"], mode=mode)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(dtype).to(device)
        (gw,) = torch.autograd.grad(out, w, grad)
    assert out.dtype == dtype and gw.dtype == dtype
    wr = c["weights"].float().clone().requires_grad_()
    ref = torch_pooled(c, mode, wr)
    (gr,) = torch.autograd.grad(ref, wr, grad.float())
    assert_close(out, ref, **tol(dtype), name="out")
    assert_close(gw, gr, **tol(dtype, 2), name="grad weights")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_per_sample_weights(backend, device, dtype):
    rows, D, lengths = CASES["mixed"]
    c = make_case(rows, D, lengths, dtype=dtype, device=device, psw=True, seed=3)
    w = c["weights"].clone().requires_grad_()
    p = c["psw"].clone().requires_grad_()
    with on(backend, device):
        out = batched_embedding_bag(w, c["table_offsets"], c["indices"], c["offsets"], p)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(dtype).to(device)
        gw, gp = torch.autograd.grad(out, (w, p), grad)
    wr = c["weights"].float().clone().requires_grad_()
    pr = c["psw"].float().clone().requires_grad_()
    ref = torch_pooled(c, "sum", wr, pr)
    gwr, gpr = torch.autograd.grad(ref, (wr, pr), grad.float())
    assert_close(out, ref, **tol(dtype, 2), name="out")
    assert_close(gw, gwr, **tol(dtype, 2), name="grad weights")
    assert_close(gp, gpr, **tol(dtype, 4), name="grad per_sample_weights")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_single_table_op(backend, device, mode):
    c = make_case([30], 24, [[3, 0, 1, 5, 2, 2]], device=device, distinct=(mode == "max"), seed=5)
    w = c["weights"].clone().requires_grad_()
    with on(backend, device):
        out = embedding_bag(w, c["indices"], c["offsets"], mode=mode)
        grad = torch.randn_like(out)
        (gw,) = torch.autograd.grad(out, w, grad)
    wr = c["weights"].clone().requires_grad_()
    ref = F.embedding_bag(c["indices"], wr, c["offsets"], mode=mode, include_last_offset=True)
    (gr,) = torch.autograd.grad(ref, wr, grad)
    assert out.shape == (6, 24)
    assert_close(out, ref, **tol(torch.float32), name="out")
    assert_close(gw, gr, **tol(torch.float32), name="grad")


@pytest.mark.parametrize("mode", MODES)
def test_large_output_cpp(mode):
    """An output of several MiB comes from the huge-page allocator (csrc/cpu/alloc.h): same values,
    and an ordinary tensor afterwards (resizable, freed, usable in place)."""
    T, B, D = 2, 1100, 512  # [B, T, D] fp32 = 4.3 MiB
    g = torch.Generator().manual_seed(3)
    w = torch.randn(T * 50, D, generator=g)
    lengths = torch.randint(0, 4, (T * B,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    indices = torch.cat([torch.randint(0, 50, (int(n),), generator=g) for n in lengths.view(T, B).sum(1)])
    c = dict(weights=w, table_offsets=torch.tensor([0, 50, 100]), indices=indices, offsets=offsets, T=T, B=B)
    with rankops.use_backend("cpp"):
        got = batched_embedding_bag(w, c["table_offsets"], indices, offsets, mode=mode)
    assert got.numel() * 4 >= 4 << 20
    assert_close(got, torch_pooled(c, mode), 1e-5, 1e-5, mode)
    got.mul_(2).resize_(B * T * D + 7)  # in place, then a larger storage from the same allocator
    assert got.shape == (B * T * D + 7,)


@pytest.mark.parametrize("D", [8, 16, 32, 64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpp_register_dims(D, dtype):
    """The cpp forward's register-accumulator path (D in 8..128; D=128 in two 64-wide passes) for
    sum, mean and per-sample weights, against torch on the same values; and a bad index or decreasing
    offsets in it still raise, naming the position."""
    require("cpp", "cpu")
    lengths = [[1, 0, 3, 1, 2, 5], [2, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1]]  # one-hot, empty and longer bags
    c = make_case([9, 1, 30], D, lengths, dtype=dtype, psw=True, seed=D)
    ref_w = c["weights"].float()
    for mode, psw in (("sum", None), ("mean", None), ("sum", c["psw"])):
        with rankops.use_backend("cpp"):
            out = batched_embedding_bag(c["weights"], c["table_offsets"], c["indices"], c["offsets"], psw, mode=mode)
        ref = torch_pooled(c, mode, ref_w, None if psw is None else psw.float())
        assert out.dtype == dtype
        assert_close(out.float(), ref, **tol(dtype), name=f"{mode} psw={psw is not None}")
    bad = c["indices"].clone()
    bad[5] = 9
    with rankops.use_backend("cpp"), pytest.raises(IndexError, match=r"indices\[5\] = 9 is out of range for table 0"):
        batched_embedding_bag(c["weights"], c["table_offsets"], bad, c["offsets"])
    dec = c["offsets"].clone()  # 0, 1, 2, 0, ...: decreasing offsets in that path too
    dec[2], dec[3] = 2, 0
    with rankops.use_backend("cpp"), pytest.raises(ValueError, match=r"offsets decrease at position 3.*table 0, bag 2"):
        batched_embedding_bag(c["weights"], c["table_offsets"], c["indices"], dec)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_sparse_grad(backend, device):
    rows, D, lengths = CASES["mixed"]
    c = make_case(rows, D, lengths, device=device, psw=True, seed=6)
    w = c["weights"].clone().requires_grad_()
    with on(backend, device):
        out = batched_embedding_bag(w, c["table_offsets"], c["indices"], c["offsets"], c["psw"], sparse=True)
        out.backward(torch.ones_like(out))
    assert w.grad.layout == torch.sparse_coo
    wr = c["weights"].clone().requires_grad_()
    torch_pooled(c, "sum", wr, c["psw"]).backward(torch.ones_like(out))
    assert_close(w.grad.to_dense(), wr.grad, **tol(torch.float32), name="sparse grad")


@pytest.mark.parametrize("psw", [False, True])
def test_cpp_dense_grad_in_position_order(psw):
    """The fp32 dense weight gradient (no sort: each thread owns a range of rows and scans every
    lookup): each row's sum in lookup order, bit for bit, on 1 and 2 threads, across the threads'
    row ranges and tables, with many duplicates."""
    rows, B = [3000, 7, 2500], 64
    lengths = [[int(n) for n in torch.randint(0, 6, (B,), generator=torch.Generator().manual_seed(t))]
               for t in range(3)]
    c = make_case(rows, 8, lengths, psw=psw, seed=3)
    c["indices"][::3] = 5  # a hot row of every table
    grad = torch.randn(B, 3, 8, generator=torch.Generator().manual_seed(1))
    gws = []
    for threads in (1, 2):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            w = c["weights"].clone().requires_grad_(True)
            with rankops.use_backend("cpp"):
                out = batched_embedding_bag(w, c["table_offsets"], c["indices"], c["offsets"], c["psw"])
            out.backward(grad)
            gws.append(w.grad)
        finally:
            torch.set_num_threads(before)
    assert torch.equal(gws[0], gws[1])
    expect = torch.zeros_like(c["weights"])
    to, off, idx = c["table_offsets"], c["offsets"], c["indices"]
    for t in range(3):
        for b in range(B):
            k = t * B + b
            for i in range(int(off[k]), int(off[k + 1])):
                row = int(to[t] + idx[i])
                g = grad[b, t] * c["psw"][i] if psw else grad[b, t]
                expect[row] = expect[row] + g
    if psw:  # (the kernel may fuse the product into its add)
        assert_close(gws[0], expect, 1e-6, 1e-6, "dense grad")
    else:
        assert torch.equal(gws[0], expect)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_hypothesis_bag_lengths(backend, data):
    T = data.draw(st.integers(1, 3))
    B = data.draw(st.integers(1, 6))
    rows = data.draw(st.lists(st.integers(1, 9), min_size=T, max_size=T))
    lengths = data.draw(st.lists(st.lists(st.integers(0, 7), min_size=B, max_size=B), min_size=T, max_size=T))
    D = data.draw(st.sampled_from([1, 3, 8, 17]))
    mode = data.draw(st.sampled_from(MODES))
    c = make_case(rows, D, lengths, distinct=(mode == "max"), seed=data.draw(st.integers(0, 99)))
    _assert_matches_torch(c, mode, backend, "cpu")


@pytest.mark.parametrize("backend", ["triton"])
@settings(max_examples=6, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), min_size=2, max_size=6))
def test_hypothesis_bag_lengths_triton(backend, lengths):
    c = make_case([11, 4], 10, [lengths, lengths[::-1]], seed=len(lengths))
    _assert_matches_torch(c, "mean", backend, "cpu", grad_like=torch.ones_like)


# ---------------------------------------------------------------------------------------------
# torch.library / torch.compile


@pytest.mark.parametrize("mode", MODES)
def test_opcheck(mode):
    c = make_case([6, 9], 5, [[2, 0, 3], [1, 4, 2]], psw=(mode == "sum"), distinct=(mode == "max"))
    w = c["weights"].clone().requires_grad_()
    p = None if c["psw"] is None else c["psw"].clone().requires_grad_()
    with rankops.use_backend("cpp"):
        torch.library.opcheck(torch.ops.rankops.batched_embedding_bag.default,
                              (w, c["table_offsets"], c["indices"], c["offsets"], p, mode, False))
        torch.library.opcheck(torch.ops.rankops.embedding_bag.default,
                              (w[:6], c["indices"][:5], c["offsets"][:4], None if p is None else p[:5], mode, False))


def test_torch_compile_fullgraph():
    c = make_case([6, 9], 5, [[2, 0, 3], [1, 4, 2]], psw=True)

    def f(w, p):
        return batched_embedding_bag(w, c["table_offsets"], c["indices"], c["offsets"], p).square().sum()

    w = c["weights"].clone().requires_grad_()
    p = c["psw"].clone().requires_grad_()
    with rankops.use_backend("cpp"):
        got = torch.compile(f, fullgraph=True, backend="aot_eager")(w, p)
        got.backward()
        w2 = c["weights"].clone().requires_grad_()
        p2 = c["psw"].clone().requires_grad_()
        want = f(w2, p2)
        want.backward()
    assert_close(got, want, 1e-5, 1e-5, "loss")
    assert_close(w.grad, w2.grad, 1e-5, 1e-5, "grad w")
    assert_close(p.grad, p2.grad, 1e-5, 1e-5, "grad psw")


# ---------------------------------------------------------------------------------------------
# bad input


def _bad_cases(c):
    idx, off = c["indices"], c["offsets"]
    neg = idx.clone()
    neg[4] = -1
    big = idx.clone()
    big[7] = 3  # position 7 is in table 1 (1 row)
    start = off.clone()
    start[0] = 1
    dec = off.clone()
    dec[3] = off[2] - 1 if off[2] > 0 else 0
    dec[2] = dec[3] + 2
    end = off.clone()
    end[-1] = idx.numel() - 1
    return [
        ("negative", IndexError, r"indices\[4\] = -1 is out of range for table 0", dict(indices=neg)),
        ("too big", IndexError, r"indices\[7\] = 3 is out of range for table 1 with 1 rows", dict(indices=big)),
        ("start", ValueError, r"offsets\[0\] = 1 must be 0", dict(offsets=start)),
        ("decrease", ValueError, r"offsets decrease at position 3.*table 0, bag 2", dict(offsets=dec)),
        ("end", ValueError, r"offsets\[-1\].*must equal the number of indices", dict(offsets=end)),
        ("length", ValueError, r"offsets must have T\*B\+1 entries", dict(offsets=off[:-1])),
        ("psw size", ValueError, r"per_sample_weights has 3 entries", dict(psw=torch.ones(3, device=idx.device))),
    ]


def _bad_base(device):
    # table 0 bags: [3, 2, 1, ...]; position 7 falls in table 1.
    return make_case([5, 1, 3], 4, [[3, 2, 1, 0], [2, 1, 0, 1], [1, 2, 1, 1]], device=device, seed=7)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_bad_inputs(backend, device):
    c = _bad_base(device)
    assert c["offsets"][:4].tolist() == [0, 3, 5, 6] and c["offsets"][4:6].tolist() == [6, 8]
    for name, exc, msg, change in _bad_cases(c):
        args = dict(weights=c["weights"], table_offsets=c["table_offsets"], indices=c["indices"],
                    offsets=c["offsets"], psw=None)
        args.update(change)
        with on(backend, device), pytest.raises(exc, match=msg):
            batched_embedding_bag(args["weights"], args["table_offsets"], args["indices"], args["offsets"],
                                  args["psw"])


def test_bad_static_arguments():
    c = _bad_base("cpu")
    with pytest.raises(ValueError, match="mode must be one of"):
        batched_embedding_bag(c["weights"], c["table_offsets"], c["indices"], c["offsets"], mode="min")
    with pytest.raises(TypeError, match="indices must be int32 or int64"):
        batched_embedding_bag(c["weights"], c["table_offsets"], c["indices"].float(), c["offsets"])
    with pytest.raises(ValueError, match="per_sample_weights need mode='sum'"):
        batched_embedding_bag(c["weights"], c["table_offsets"], c["indices"], c["offsets"],
                              torch.ones(c["indices"].numel()), mode="mean")
    bad_to = c["table_offsets"].clone()
    bad_to[-1] += 1
    for b in ("reference", "cpp"):
        with rankops.use_backend(b), pytest.raises(ValueError, match="table_offsets must rise from 0"):
            batched_embedding_bag(c["weights"], bad_to, c["indices"], c["offsets"])


# ---------------------------------------------------------------------------------------------
# fused backward + optimizer


def _rowwise_adagrad_reference(w, s, g, lr, eps):
    """Row-wise Adagrad on a dense gradient: untouched rows have g = 0 and do not move."""
    s += (g * g).mean(1)
    w -= lr * g / (s.sqrt() + eps)[:, None]


FUSED_BACKENDS = backend_devices("reference", "cpp", "triton", "cuda")


@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rowwise_adagrad"])
@pytest.mark.parametrize("mode,psw", [("sum", False), ("sum", True), ("mean", False), ("max", False)])
def test_fused_optimizer_matches_dense(backend, device, optimizer, mode, psw):
    rows, D, lengths = CASES["mixed"]
    lr, eps = 0.1, 1e-8
    opt = FusedOptimizer(optimizer, lr=lr, eps=eps)
    c0 = make_case(rows, D, lengths, device=device, distinct=(mode == "max"), seed=8)
    w = c0["weights"].clone()
    state = opt.init_state(w)
    wd = c0["weights"].clone().requires_grad_()  # the dense reference
    if optimizer == "sgd":
        torch_opt = torch.optim.SGD([wd], lr=lr)
    elif optimizer == "adagrad":
        torch_opt = torch.optim.Adagrad([wd], lr=lr, eps=eps)
    sd = torch.zeros(w.shape[0], device=device)
    for step in range(2 if backend == "triton" else 3):
        c = make_case(rows, D, lengths, device=device, psw=psw, seed=100 + step)
        target = torch.randn(c["B"], c["T"], D, generator=torch.Generator().manual_seed(step)).to(device)
        with on(backend, device):
            out = fused_batched_embedding_bag(w, state, c["table_offsets"], c["indices"], c["offsets"], c["psw"],
                                              mode, optimizer=opt)
            ((out - target) ** 2).sum().backward()
        ref = torch_pooled(c, mode, wd, c["psw"])
        assert_close(out, ref, 1e-5, 1e-5, f"step {step} forward")
        ((ref - target) ** 2).sum().backward()
        if optimizer == "rowwise_adagrad":
            with torch.no_grad():
                _rowwise_adagrad_reference(wd, sd, wd.grad, lr, eps)
        else:
            torch_opt.step()
        wd.grad = None
        assert_close(w, wd, 1e-5, 1e-5, f"step {step} weights")
    if optimizer == "adagrad":
        assert_close(state, torch_opt.state[wd]["sum"], 1e-5, 1e-5, "adagrad state")
    if optimizer == "rowwise_adagrad":
        assert_close(state, sd, 1e-5, 1e-5, "row-wise state")


@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
def test_fused_psw_grad_and_lr_change(backend, device):
    """psw gets its gradient from the weights before the update; a new lr applies at once."""
    rows, D, lengths = CASES["mixed"]
    c = make_case(rows, D, lengths, device=device, psw=True, seed=9)
    opt = FusedOptimizer("sgd", lr=0.5)
    w = c["weights"].clone()
    p = c["psw"].clone().requires_grad_()
    with on(backend, device):
        out = fused_batched_embedding_bag(w, opt.init_state(w), c["table_offsets"], c["indices"], c["offsets"], p,
                                          optimizer=opt)
        opt.lr = 0.25
        out.sum().backward()
    wr = c["weights"].clone().requires_grad_()
    pr = c["psw"].clone().requires_grad_()
    torch_pooled(c, "sum", wr, pr).sum().backward()
    assert_close(p.grad, pr.grad, 1e-5, 1e-5, "psw grad")
    assert_close(w, c["weights"] - 0.25 * wr.grad, 1e-5, 1e-5, "weights")


@pytest.mark.parametrize("backend,device", backend_devices("cpp", "cuda"))
def test_fused_torch_compile(backend, device):
    """A compiled training step (fullgraph, inductor) updates the tables as the eager step does,
    psw gradient included, and reads a changed lr without recompiling."""
    import torch._dynamo

    rows, D, lengths = CASES["mixed"]
    c = make_case(rows, D, lengths, device=device, psw=True, seed=11)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    runs = []
    for compiled in (False, True):
        opt = FusedOptimizer("rowwise_adagrad", lr=0.1, eps=1e-8)
        w = c["weights"].clone()
        s = opt.init_state(w)
        p = c["psw"].clone().requires_grad_()
        x = torch.randn(c["B"], D, generator=torch.Generator().manual_seed(1)).to(device)

        def loss_fn(w, s, p, x):
            out = fused_batched_embedding_bag(w, s, c["table_offsets"], c["indices"], c["offsets"], p,
                                              optimizer=opt)
            return ((out.sum(1) - x) ** 2).sum()

        fn = torch.compile(loss_fn, fullgraph=True) if compiled else loss_fn
        losses = []
        with on(backend, device):
            for i in range(3):
                if i == 2:
                    opt.lr = 0.3
                loss = fn(w, s, p, x)
                loss.backward()  # the compiled backward graph: the fused update
                losses.append(loss.detach())
        runs.append((w, s, p.grad, torch.stack(losses)))
    (w0, s0, g0, l0), (w1, s1, g1, l1) = runs
    assert not torch.equal(w0, c["weights"])
    assert_close(l1, l0, 1e-5, 1e-5, "losses")
    assert_close(w1, w0, 1e-5, 1e-5, "weights")
    assert_close(s1, s0, 1e-5, 1e-5, "state")
    assert_close(g1, g0, 1e-5, 1e-5, "psw grad")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
def test_fused_deterministic(backend, device):
    """Many duplicates of few rows: two runs give bit-identical weights and state."""
    c = make_case([3, 2], 16, [[9, 8, 7, 9], [5, 9, 9, 3]], device=device, psw=True, seed=10)
    results = []
    for _ in range(2):
        opt = FusedOptimizer("adagrad", lr=0.1)
        w = c["weights"].clone()
        s = opt.init_state(w)
        with on(backend, device):
            out = fused_batched_embedding_bag(w, s, c["table_offsets"], c["indices"], c["offsets"], c["psw"],
                                              optimizer=opt)
            out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(device))
        results.append((w, s))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("backend,device", FUSED_BACKENDS)
@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise_adagrad"])
def test_fused_bad_input_leaves_state(backend, device, optimizer):
    c = _bad_base(device)
    opt = FusedOptimizer(optimizer, lr=0.1)
    w = c["weights"].clone()
    s = opt.init_state(w) + 0.5
    w0, s0 = w.clone(), s.clone()
    for name, exc, msg, change in _bad_cases(c):
        args = dict(indices=c["indices"], offsets=c["offsets"], psw=None)
        args.update(change)
        with on(backend, device), pytest.raises(exc, match=msg):
            out = fused_batched_embedding_bag(w, s, c["table_offsets"], args["indices"], args["offsets"],
                                              args["psw"], optimizer=opt)
            out.sum().backward()
        assert torch.equal(w, w0) and torch.equal(s, s0), name
    # The direct update op validates too, before writing.
    bad = c["indices"].clone()
    bad[0] = 99
    with on(backend, device), pytest.raises(IndexError, match=r"indices\[0\] = 99"):
        torch.ops.rankops.batched_embedding_bag_update(
            w, s, torch.ones(c["B"], c["T"], 4, device=device), c["table_offsets"], bad, c["offsets"], None, "sum",
            torch.empty(0, dtype=torch.int64, device=device), optimizer, torch.tensor(0.1, dtype=torch.float64),
            1e-10)
    assert torch.equal(w, w0) and torch.equal(s, s0)


def test_fused_needs_weights_without_grad():
    c = _bad_base("cpu")
    opt = FusedOptimizer("sgd")
    with pytest.raises(ValueError, match="must not require grad"):
        fused_batched_embedding_bag(c["weights"].clone().requires_grad_(), opt.init_state(c["weights"]),
                                    c["table_offsets"], c["indices"], c["offsets"], optimizer=opt)
    with pytest.raises(ValueError, match="adagrad state must be float32"):
        fused_batched_embedding_bag(c["weights"], torch.zeros(3), c["table_offsets"], c["indices"], c["offsets"],
                                    optimizer=FusedOptimizer("adagrad"))


def test_native_kernels_registered():
    """The extension registers the CPU kernels, and the CUDA ones whenever it was built with CUDA
    (they compile on the CPU machines and run only where a GPU is lent)."""
    from rankops import backend

    ext = backend.extension()
    assert ext is not None, "rankops._C is not built"
    for name in ("batched_embedding_bag", "batched_embedding_bag_backward", "batched_embedding_bag_update"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"rankops_C::{name}", "CPU"), name
        if ext.with_cuda:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"rankops_C::{name}", "CUDA"), name


def test_triton_aot_specs():
    """The specs scripts/gpu_report.py compiles for sm_90a name every argument of their kernel, and
    cover the three kernels at every benchmark dim and dtype."""
    from rankops.ops.embedding_bag import triton as K

    specs = K.aot_specs()
    assert {s["kernel"] for s in specs} == {"_forward_kernel", "_segment_kernel", "_psw_grad_kernel"}
    for s in specs:
        assert set(s["signature"]) == set(s["fn"].arg_names), s["config"]
        assert all(s["signature"][n] == "constexpr" for n in s["constexprs"])
    assert len({(s["kernel"], s["config"]) for s in specs}) == len(specs), "configs must be unique"
    assert len(specs) == 3 * len(K.BENCH_DIMS) * (4 + 6 + 1)

