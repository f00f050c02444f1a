"""target_attention / jagged_target_attention: every backend against the reference and against
torch's scaled_dot_product_attention with a padding mask, forward and gradients, three dtypes.

Shapes are deliberately odd (L = 37 and 70: not a multiple of any block size; d = 24: not a power
of two) next to regular ones. Triton runs under the interpreter here, so its grids are kept small.
The cuda backend (csrc/cuda/attention.cu) runs only where a GPU is (the `gpu` marker): it joins the
shared tests above and has its own section for the paths its kernels branch on.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rankops
from rankops.ops.attention import jagged_target_attention, target_attention
from rankops.ops.attention import reference as ref
from tests.utils import DTYPES, assert_close, backend_devices, on, require, tol

KERNELS = backend_devices("cpp", "triton", "cuda")
ALL = backend_devices("reference", "cpp", "triton", "cuda")


def make(B, H, Q, L, d, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype).to(device)  # noqa: E731
    return mk(B, H, Q, d), mk(B, H, L, d), mk(B, H, L, d), mk(B, H, Q, d)


def run(fn, q, k, v, aux, grad, **kw):
    """(out, lse, dq, dk, dv) of fn on fresh leaves."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, lse = fn(q, k, v, aux, return_lse=True, **kw)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    return out, lse, dq, dk, dv


def expected(q, k, v, lengths, grad, scale=None):
    """The fp32 ground truth: the reference forward on fp32 copies, differentiated by autograd."""
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    s = scale if scale is not None else q.shape[-1] ** -0.5
    out, lse = ref.target_attention(qf, kf, vf, lengths, s)
    dq, dk, dv = torch.autograd.grad(out, (qf, kf, vf), grad.float())
    return out, lse, dq, dk, dv


def check_all(got, want, dtype, what=""):
    names = ("out", "lse", "dq", "dk", "dv")
    for name, a, e in zip(names, got, want):
        # Gradients sum Q or L products of rounded values: allow a few ulps more than the output.
        scale = 1.0 if name in ("out", "lse") else 3.0
        assert_close(a, e.to(a.device), **tol(dtype, scale), name=f"{what}{name}")


# ---------------------------------------------------------------------------------------------
# padded


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("Q", [1, 5])
def test_padded_vs_reference(backend, device, dtype, Q):
    B, H, L, d = 4, 2, 37, 24
    q, k, v, g = make(B, H, Q, L, d, dtype, device)
    lengths = torch.tensor([0, 1, L, 20], device=device)
    want = expected(q.cpu(), k.cpu(), v.cpu(), lengths.cpu(), g.cpu())
    with on(backend, device):
        got = run(target_attention, q, k, v, lengths, g)
    for t in got:
        assert t.dtype == (torch.float32 if t is got[1] else dtype)
    check_all(got, want, dtype)


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("Q", [1, 3])
def test_padded_vs_sdpa(backend, device, Q):
    """Against torch's own attention with a boolean padding mask (fp32; SDPA has no notion of an
    empty sample, so every length here is >= 1)."""
    B, H, L, d = 3, 2, 70, 16
    q, k, v, g = make(B, H, Q, L, d, torch.float32, device, seed=1)
    lengths = torch.tensor([1, 70, 33], device=device)
    mask = (torch.arange(L, device=device)[None, :] < lengths[:, None])[:, None, None, :]
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    out_s = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask)
    want = (out_s, *torch.autograd.grad(out_s, (qs, ks, vs), g))
    with on(backend, device):
        out, _, dq, dk, dv = run(target_attention, q, k, v, lengths, g)
    for name, a, e in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), want):
        assert_close(a, e, atol=2e-5, rtol=2e-5, name=name)


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_padded_accuracy_rule_vs_sdpa(backend, device, dtype):
    """FlashAttention's rule: against SDPA in fp32 (on the same rounded inputs), our error at a low
    dtype is at most twice SDPA's own error at that dtype (plus a few ulps of the output for the
    cases where SDPA happens to be almost exact), forward and every gradient."""
    B, H, Q, L, d = 3, 2, 4, 70, 16
    q, k, v, g = make(B, H, Q, L, d, dtype, device, seed=9)
    lengths = torch.tensor([1, 70, 33], device=device)
    mask = (torch.arange(L, device=device)[None, :] < lengths[:, None])[:, None, None, :]

    def sdpa(*xs):
        xs = [t.clone().requires_grad_() for t in xs]
        out = F.scaled_dot_product_attention(*xs, attn_mask=mask)
        return (out, *torch.autograd.grad(out, xs, g.to(out.dtype)))

    exact = sdpa(q.float(), k.float(), v.float())
    low = sdpa(q, k, v)
    with on(backend, device):
        out, _, dq, dk, dv = run(target_attention, q, k, v, lengths, g)
    ulp = torch.finfo(dtype).eps
    for name, ours, theirs, e in zip(("out", "dq", "dk", "dv"), (out, dq, dk, dv), low, exact):
        err = (ours.float() - e).abs().max().item()
        sdpa_err = (theirs.float() - e).abs().max().item()
        bound = 2 * sdpa_err + 4 * ulp * e.abs().max().item()
        assert err <= bound, f"{name}: error {err:.3g} > bound {bound:.3g} (SDPA at {dtype} errs {sdpa_err:.3g})"


@pytest.mark.parametrize("backend,device", KERNELS)
def test_long_sequence_split(backend, device):
    """L well past one block (and, for triton, past one split): the combine of partial softmaxes."""
    B, H, Q, L, d = 2, 1, 2, 700, 16
    q, k, v, g = make(B, H, Q, L, d, torch.float32, device, seed=2)
    lengths = torch.tensor([700, 513], device=device)
    want = expected(q.cpu(), k.cpu(), v.cpu(), lengths.cpu(), g.cpu())
    with on(backend, device):
        got = run(target_attention, q, k, v, lengths, g)
    check_all(got, want, torch.float32)


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("d", [5, 80], ids=["d5", "d80"])
def test_head_dims(backend, device, d):
    """Head dims off the fast paths: below one vector, and above 64 (cpp's generic loops)."""
    B, H, Q, L = 2, 2, 3, 70
    q, k, v, g = make(B, H, Q, L, d, torch.float32, device, seed=8)
    lengths = torch.tensor([70, 9], device=device)
    want = expected(q, k, v, lengths, g)
    with on(backend, device):
        got = run(target_attention, q, k, v, lengths, g)
    check_all(got, want, torch.float32)


@pytest.mark.parametrize("backend,device", KERNELS)
def test_many_candidates(backend, device):
    """Q = 130 candidates per user: several query blocks (Triton: 64 rows each) over shared keys."""
    B, H, Q, L, d = 2, 1, 130, 40, 16
    q, k, v, g = make(B, H, Q, L, d, torch.float32, device, seed=10)
    lengths = torch.tensor([40, 3], device=device)
    want = expected(q, k, v, lengths, g)
    with on(backend, device):
        got = run(target_attention, q, k, v, lengths, g)
    check_all(got, want, torch.float32)


@pytest.mark.parametrize("backend,device", ALL)
def test_empty_samples_give_zeros(backend, device):
    B, H, Q, L, d = 3, 2, 2, 8, 16
    q, k, v, g = make(B, H, Q, L, d, torch.float32, device, seed=3)
    lengths = torch.tensor([0, 0, 0], device=device)
    with on(backend, device):
        out, lse, dq, dk, dv = run(target_attention, q, k, v, lengths, g)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.isneginf(lse).all()
    for t in (dq, dk, dv):
        assert torch.equal(t, torch.zeros_like(t))


@pytest.mark.parametrize("backend,device", ALL)
def test_padding_is_never_read(backend, device):
    """NaN in the padded keys and values must not leak into outputs or gradients."""
    B, H, Q, L, d = 2, 2, 3, 20, 16
    q, k, v, g = make(B, H, Q, L, d, torch.float32, device, seed=4)
    lengths = torch.tensor([5, 0], device=device)
    want = expected(q, k, v, lengths, g)
    k[0, :, 5:] = float("nan")
    v[0, :, 5:] = float("nan")
    k[1], v[1] = float("nan"), float("nan")
    with on(backend, device):
        got = run(target_attention, q, k, v, lengths, g)
    check_all(got, want, torch.float32)


@pytest.mark.parametrize("backend,device", KERNELS)
def test_noncontiguous_inputs_and_scale(backend, device):
    B, H, Q, L, d = 2, 3, 4, 19, 16
    q, k, v, g = make(B, H, Q, L, d, torch.float32, device, seed=5)
    # the same values in [B, L, H, d] storage, viewed as [B, H, L, d]
    kt = k.transpose(1, 2).contiguous().transpose(1, 2)
    vt = v.transpose(1, 2).contiguous().transpose(1, 2)
    assert not kt.is_contiguous()
    lengths = torch.tensor([19, 7], dtype=torch.int32, device=device)
    want = expected(q, k, v, lengths, g, scale=0.3)
    with on(backend, device):
        got = run(target_attention, q, kt, vt, lengths, g, scale=0.3)
    check_all(got, want, torch.float32)


# ---------------------------------------------------------------------------------------------
# jagged


def jagged_case(lengths, H, Q, d, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    B, S = len(lengths), sum(lengths)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype).to(device)  # noqa: E731
    offsets = torch.tensor([0] + list(lengths), device=device).cumsum(0)
    return mk(B, H, Q, d), mk(S, H, d), mk(S, H, d), offsets, mk(B, H, Q, d)


def expected_jagged(q, k, v, offsets, grad):
    qf, kf, vf = (t.detach().float().cpu().requires_grad_() for t in (q, k, v))
    out, lse = ref.jagged_target_attention(qf, kf, vf, offsets.cpu(), q.shape[-1] ** -0.5)
    dq, dk, dv = torch.autograd.grad(out, (qf, kf, vf), grad.float().cpu())
    return out, lse, dq, dk, dv


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_jagged_vs_reference(backend, device, dtype):
    q, k, v, offsets, g = jagged_case([3, 0, 37, 1], H=2, Q=3, d=24, dtype=dtype, device=device)
    want = expected_jagged(q, k, v, offsets, g)
    with on(backend, device):
        got = run(jagged_target_attention, q, k, v, offsets, g)
    check_all(got, want, dtype)


@pytest.mark.parametrize("backend,device", ALL)
def test_jagged_matches_padded(backend, device):
    lengths = [5, 17, 0, 9]
    q, k, v, offsets, g = jagged_case(lengths, H=2, Q=2, d=16, dtype=torch.float32, device=device, seed=6)
    kp, lens = ref.jagged_to_padded(k, offsets)
    vp, _ = ref.jagged_to_padded(v, offsets)
    with on(backend, device):
        out_j = jagged_target_attention(q, k, v, offsets)
        out_p = target_attention(q, kp.contiguous(), vp.contiguous(), lens)
    assert_close(out_j, out_p, atol=1e-6, rtol=1e-6, name="out")


def _jagged_property(backend, device, lengths, H, Q, d, dtype):
    q, k, v, offsets, g = jagged_case(lengths, H, Q, d, dtype, device, seed=sum(lengths))
    want = expected_jagged(q, k, v, offsets, g)
    with on(backend, device):
        got = run(jagged_target_attention, q, k, v, offsets, g)
    check_all(got, want, dtype, what=f"lengths={lengths} H={H} Q={Q} d={d} {dtype}: ")


@pytest.mark.parametrize("backend,device", backend_devices("cpp"))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(0, 150), min_size=1, max_size=5),
    H=st.integers(1, 3),
    Q=st.integers(1, 6),
    d=st.sampled_from([8, 16, 24, 64]),
    dtype=st.sampled_from(DTYPES),
)
def test_jagged_hypothesis_cpp(backend, device, lengths, H, Q, d, dtype):
    _jagged_property(backend, device, lengths, H, Q, d, dtype)


@pytest.mark.parametrize("backend,device", backend_devices("triton"))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(0, 150), min_size=1, max_size=3),
    H=st.integers(1, 2),
    Q=st.sampled_from([1, 2, 17]),
    d=st.sampled_from([16, 24]),
    dtype=st.sampled_from(DTYPES),
)
def test_jagged_hypothesis_triton(backend, device, lengths, H, Q, d, dtype):
    """Fewer, smaller examples than cpp: each interpreted program costs about a millisecond."""
    _jagged_property(backend, device, lengths, H, Q, d, dtype)


@pytest.mark.parametrize("backend,device", backend_devices("cuda"))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(0, 700), min_size=1, max_size=5),
    H=st.integers(1, 3),
    Q=st.sampled_from([1, 2, 17, 64, 70]),
    d=st.sampled_from([8, 16, 24, 33, 64, 128]),
    dtype=st.sampled_from(DTYPES),
)
def test_jagged_hypothesis_cuda(backend, device, lengths, H, Q, d, dtype):
    _jagged_property(backend, device, lengths, H, Q, d, dtype)


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("backend,device", ALL)
def test_bad_inputs(backend, device):
    q, k, v, _ = make(2, 2, 1, 6, 8, torch.float32, device)
    with on(backend, device):
        with pytest.raises(ValueError, match="lengths must be <= L"):
            target_attention(q, k, v, torch.tensor([7, 1], device=device))
        with pytest.raises(ValueError, match="lengths must be >= 0"):
            target_attention(q, k, v, torch.tensor([-1, 1], device=device))
        with pytest.raises(ValueError, match="head dims differ"):
            target_attention(q, k[..., :4], v[..., :4], torch.tensor([1, 1], device=device))
        with pytest.raises(ValueError, match="heads"):
            target_attention(q, k[:, :1], v[:, :1], torch.tensor([1, 1], device=device))
        with pytest.raises(ValueError, match="lengths has 3 entries"):
            target_attention(q, k, v, torch.tensor([1, 1, 1], device=device))
        with pytest.raises(TypeError, match="lengths must be int32 or int64"):
            target_attention(q, k, v, torch.tensor([1.0, 1.0], device=device))
        with pytest.raises(TypeError, match="dtype"):
            target_attention(q, k.half(), v.half(), torch.tensor([1, 1], device=device))
        with pytest.raises(ValueError, match="same shape"):
            target_attention(q, k, v[:, :, :3], torch.tensor([1, 1], device=device))

        kj, vj = k[0].transpose(0, 1).contiguous(), v[0].transpose(0, 1).contiguous()  # [6, 2, 8]
        with pytest.raises(ValueError, match="inconsistent with the 6 packed keys"):
            jagged_target_attention(q, kj, vj, torch.tensor([0, 2, 5], device=device))
        with pytest.raises(ValueError, match="start at 0"):
            jagged_target_attention(q, kj, vj, torch.tensor([1, 2, 6], device=device))
        with pytest.raises(ValueError, match="non-decreasing"):
            jagged_target_attention(q, kj, vj, torch.tensor([0, 7, 6], device=device))
        with pytest.raises(ValueError, match="B\\+1"):
            jagged_target_attention(q, kj, vj, torch.tensor([0, 6], device=device))
        with pytest.raises(ValueError, match="head dims differ"):
            jagged_target_attention(q, kj[..., :4], vj[..., :4], torch.tensor([0, 2, 6], device=device))


# ---------------------------------------------------------------------------------------------
# torch.library / torch.compile


@pytest.mark.parametrize("backend,device", ALL)
def test_opcheck(backend, device):
    q, k, v, _ = make(2, 2, 3, 9, 8, torch.float32, device)
    lengths = torch.tensor([4, 9], device=device)
    offsets = torch.tensor([0, 4, 13], device=device)
    kj = torch.randn(13, 2, 8, device=device)
    vj = torch.randn(13, 2, 8, device=device)
    with on(backend, device):
        torch.library.opcheck(
            torch.ops.rankops.target_attention.default,
            (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), lengths, 0.35),
        )
        torch.library.opcheck(
            torch.ops.rankops.jagged_target_attention.default,
            (q, kj.requires_grad_(), vj.requires_grad_(), offsets, 0.35),
        )


@pytest.mark.parametrize("backend,device", backend_devices("cpp"))
def test_compile_fullgraph(backend, device):
    q, k, v, g = make(3, 2, 4, 11, 16, torch.float32, device, seed=7)
    lengths = torch.tensor([0, 11, 5], device=device)
    offsets = torch.tensor([0, 3, 3, 10], device=device)
    kj, vj = torch.randn(10, 2, 16), torch.randn(10, 2, 16)

    def f(q, k, v, kj, vj):
        return target_attention(q, k, v, lengths).sum() + jagged_target_attention(q, kj, vj, offsets).square().sum()

    args = [t.clone().requires_grad_() for t in (q, k, v, kj, vj)]
    args_c = [t.clone().requires_grad_() for t in (q, k, v, kj, vj)]
    with on(backend, device):
        want = f(*args)
        want.backward()
        got = torch.compile(f, fullgraph=True)(*args_c)
        got.backward()
    assert_close(got, want, atol=1e-5, rtol=1e-5, name="loss")
    for a, b in zip(args_c, args):
        assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5, name="grad")


# ---------------------------------------------------------------------------------------------
# the CUDA kernels (csrc/cuda/attention.cu): the paths they branch on. On an H200 (132 SMs) the
# forward splits the keys while B*H*(query blocks) < 4 * 132 and a sample has more than
# max(4 * tile, 128) keys (tile: keys per shared-memory pass, 4096 / d up to 256 in the forward,
# up to 64 in the backward, and 64 at d = 64): B*H = 6 and L = 3000 at d = 64 take 12 splits,
# L = 100 one split (direct write). A query block holds up to 64 queries (and 4096 / d): Q = 130
# takes three (the last of 2 rows), and the backward then keeps dq in its workspace.

CUDA = backend_devices("cuda")


def _padded_case(B, H, Q, L, d, dtype, lengths, seed):
    q, k, v, g = make(B, H, Q, L, d, dtype, "cuda", seed=seed)
    return q, k, v, torch.tensor(lengths, device="cuda"), g


@pytest.mark.parametrize("backend,device", CUDA)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("L", [100, 3000], ids=["L100-one-split", "L3000-splits"])
@pytest.mark.parametrize("Q", [1, 64, 130])
def test_cuda_splits_and_query_blocks(backend, device, dtype, L, Q):
    lengths = [L, 0, L // 3, 1, L - 7, 2 * L // 3]
    q, k, v, lens, g = _padded_case(6, 1, Q, L, 64, dtype, lengths, seed=L + Q)
    want = expected(q, k, v, lens, g)
    with on(backend, device):
        got = run(target_attention, q, k, v, lens, g)
    check_all(got, want, dtype, what=f"Q={Q} L={L}: ")
    assert torch.isneginf(got[1][1]).all() and not got[0][1].float().any(), "an empty sample: lse -inf, out 0"


@pytest.mark.parametrize("backend,device", CUDA)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [1, 5, 16, 24, 33, 80, 128, 200], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("Q", [1, 7])
def test_cuda_head_dims(backend, device, dtype, d, Q):
    """d below one 16-byte vector, odd d (scalar loads), multiples of the vector (16-byte loads),
    and the smaller tiles of d > 64 (32 keys) and d > 128 (16 keys); long and short samples."""
    q, k, v, lens, g = _padded_case(2, 2, Q, 700, d, dtype, [700, 45], seed=d)
    want = expected(q, k, v, lens, g)
    with on(backend, device):
        got = run(target_attention, q, k, v, lens, g)
    check_all(got, want, dtype, what=f"d={d}: ")


@pytest.mark.parametrize("backend,device", CUDA)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_unaligned_inputs_take_the_scalar_loads(backend, device, dtype):
    """Contiguous k and v that start one element past a 16-byte boundary (d a multiple of the
    vector): the kernels must see it and load element by element."""
    B, H, Q, L, d = 2, 2, 3, 300, 32
    q, k, v, lens, g = _padded_case(B, H, Q, L, d, dtype, [300, 130], seed=11)
    k_buf = torch.empty(k.numel() + 1, dtype=dtype, device="cuda")
    v_buf = torch.empty(v.numel() + 1, dtype=dtype, device="cuda")
    ku, vu = k_buf[1:].view_as(k), v_buf[1:].view_as(v)
    ku.copy_(k)
    vu.copy_(v)
    assert ku.is_contiguous() and ku.data_ptr() % 16 != 0
    want = expected(q, k, v, lens, g)
    with on(backend, device):
        got = run(target_attention, q, ku, vu, lens, g)
    check_all(got, want, dtype)


@pytest.mark.parametrize("backend,device", CUDA)
@pytest.mark.parametrize("L", [40, 3000])
@pytest.mark.parametrize("Q", [1, 64, 130])
def test_cuda_zero_lengths(backend, device, L, Q):
    """Every sample empty: zeros, lse = -inf, zero gradients (dk / dv padding written as 0)."""
    q, k, v, lens, g = _padded_case(3, 2, Q, L, 16, torch.float32, [0, 0, 0], seed=3)
    with on(backend, device):
        out, lse, dq, dk, dv = run(target_attention, q, k, v, lens, g)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.isneginf(lse).all()
    for t in (dq, dk, dv):
        assert torch.equal(t, torch.zeros_like(t))


@pytest.mark.parametrize("backend,device", CUDA)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("L", [50, 3000])
@pytest.mark.parametrize("Q", [1, 64])
def test_cuda_nan_padding_never_leaks(backend, device, dtype, L, Q):
    """NaN in every padded key and value (and in all of an empty sample's), one split and several."""
    q, k, v, lens, g = _padded_case(3, 2, Q, L, 24, dtype, [L // 2 + 1, 0, L], seed=4)
    want = expected(q, k, v, lens, g)
    n = L // 2 + 1
    k[0, :, n:], v[0, :, n:] = float("nan"), float("nan")
    k[1], v[1] = float("nan"), float("nan")
    with on(backend, device):
        got = run(target_attention, q, k, v, lens, g)
    check_all(got, want, dtype)  # also: non-finite exactly where the reference has them (lse of sample 1)
    assert not got[3][0, :, n:].float().any() and not got[4][0, :, n:].float().any(), "padded rows get 0"


@pytest.mark.parametrize("backend,device", CUDA)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("Q", [1, 64])
@pytest.mark.parametrize("lengths", [[0, 3000, 0, 17, 1], [5, 0, 0, 64, 129], [0]], ids=["long", "short", "one-empty"])
def test_cuda_jagged_with_empty_samples(backend, device, dtype, Q, lengths):
    q, k, v, offsets, g = jagged_case(lengths, H=2, Q=Q, d=32, dtype=dtype, device="cuda", seed=sum(lengths))
    want = expected_jagged(q, k, v, offsets, g)
    with on(backend, device):
        got = run(jagged_target_attention, q, k, v, offsets, g)
    check_all(got, want, dtype, what=f"lengths={lengths}: ")
    empty = [b for b, n in enumerate(lengths) if n == 0]
    assert torch.isneginf(got[1][empty]).all() and not got[0][empty].float().any()


@pytest.mark.parametrize("backend,device", CUDA)
def test_cuda_empty_shapes(backend, device):
    """B = 0, Q = 0, L = 0 and S = 0: shaped outputs, no launch with an empty grid."""
    with on(backend, device):
        for B, Q, L in ((0, 2, 5), (2, 0, 5), (2, 3, 0)):
            q, k, v, g = make(B, 2, Q, L, 8, torch.float32, "cuda")
            lens = torch.zeros(B, dtype=torch.int64, device="cuda")
            out, lse, dq, dk, dv = run(target_attention, q, k, v, lens, g)
            assert out.shape == q.shape and lse.shape == q.shape[:3] and dk.shape == k.shape
            assert torch.isneginf(lse).all() and not out.any() and not dq.any() and not dk.any()
        q, g = torch.randn(2, 2, 3, 8, device="cuda"), torch.randn(2, 2, 3, 8, device="cuda")
        kj = torch.randn(0, 2, 8, device="cuda")
        out, lse, dq, dk, dv = run(jagged_target_attention, q, kj, kj.clone(), torch.zeros(3, dtype=torch.int64,
                                                                                         device="cuda"), g)
        assert not out.any() and torch.isneginf(lse).all() and not dq.any() and dk.shape == (0, 2, 8)


@pytest.mark.parametrize("backend,device", CUDA)
def test_cuda_is_deterministic_and_runs_the_cuda_kernels(backend, device):
    """No atomics anywhere: two runs give the same bits. The profiler shows our kernels ran."""
    from torch.profiler import ProfilerActivity, profile

    q, k, v, lens, g = _padded_case(2, 2, 64, 3000, 64, torch.bfloat16, [3000, 1234], seed=12)
    with on(backend, device), profile(activities=[ProfilerActivity.CPU]) as prof:
        a = run(target_attention, q, k, v, lens, g)
        b = run(target_attention, q, k, v, lens, g)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    events = {e.name for e in prof.events()}
    assert "rankops_C::target_attention" in events and "rankops_C::target_attention_backward" in events


@pytest.mark.parametrize("backend,device", CUDA)
def test_cuda_head_dim_limit(backend, device):
    q, k, v, g = make(1, 1, 1, 4, 520, torch.float32, "cuda")
    with on(backend, device), pytest.raises(ValueError, match="head dims up to 512"):
        target_attention(q, k, v, torch.tensor([4], device="cuda"))


# ---------------------------------------------------------------------------------------------
# DIN's activation unit


def din_params(d, hidden, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: (torch.randn(*s, generator=g) * 0.3).to(dtype)  # noqa: E731
    h1 = hidden[0]
    p = dict(w1=mk(h1, 4 * d), b1=mk(h1), w2=None, b2=None)
    if len(hidden) > 1:
        p.update(w2=mk(hidden[1], h1), b2=mk(hidden[1]))
    p.update(w_out=mk(1, hidden[-1]), b_out=mk(1))
    alphas = tuple(mk(h) for h in hidden) + (None,) * (2 - len(hidden))
    return p, alphas


@pytest.mark.parametrize("activation", ["sigmoid", "prelu", "dice"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("hidden", [(80, 40), (12,)], ids=["80-40", "12"])
def test_din_vs_concat(activation, normalize, hidden):
    """The fused first layer (c_q + M_q k) against the literal concatenate-then-MLP, forward and
    the gradients of every input and parameter."""
    B, L, d = 5, 13, 8
    params, alphas = din_params(d, hidden)
    g = torch.Generator().manual_seed(1)
    q, keys = torch.randn(B, d, generator=g), torch.randn(B, L, d, generator=g)
    lengths = torch.tensor([0, 1, 13, 7, 4])
    leaves = [q, keys] + [t for t in params.values() if t is not None] + [a for a in alphas if a is not None]
    grad = torch.randn(B, d, generator=g)

    def run_din(fn, **kw):
        xs = [t.clone().requires_grad_() for t in leaves]
        q_, k_ = xs[:2]
        it = iter(xs[2:])
        p = {name: (next(it) if t is not None else None) for name, t in params.items()}
        a = tuple(next(it) if t is not None else None for t in alphas)
        out = fn(q_, k_, lengths, **p, alphas=a, normalize=normalize, **kw)
        return (out, *torch.autograd.grad(out, xs, grad, allow_unused=True, materialize_grads=True))

    got = run_din(rankops.din_attention, activation=activation)
    want = run_din(ref.din_attention_concat, activation_kind=activation)
    for i, (a, e) in enumerate(zip(got, want)):
        assert_close(a, e, atol=1e-5, rtol=1e-4, name=f"output {i}")
    assert torch.equal(got[0][0], torch.zeros(d)), "an empty sample pools to zeros"


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("hidden", [(20, 9), (7,)], ids=["20-9", "7"])
@pytest.mark.parametrize("lengths", [[0, 1, 11, 7, 4, 0], [0] * 6], ids=["mixed", "all-empty"])
def test_din_dice_training_scores_valid_keys_only(normalize, hidden, lengths):
    """Dice on batch statistics in training scores the valid keys only outside the reference backend
    (rankops.ops.attention.packed); the reference backend keeps the padded grid. Same output, gradients and batch
    statistics either way, NaN padding included."""
    from torch.profiler import ProfilerActivity, profile

    q, keys, _, params, alphas, _, grad = _din_case("dice", hidden, torch.float32)
    lengths = torch.tensor(lengths)
    keys = keys.clone()
    keys[3, 7:] = float("nan")  # padding never leaks
    names = [k for k, v in params.items() if v is not None]

    def run(backend):
        leaves = [t.clone().requires_grad_() for t in [q, keys] + [params[n] for n in names]
                  + [a for a in alphas if a is not None]]
        p = dict(zip(names, leaves[2:2 + len(names)]), **{k: None for k, v in params.items() if v is None})
        a = tuple(leaves[2 + len(names):]) + (None,) * (2 - len(leaves[2 + len(names):]))
        stats: list = []
        with rankops.use_backend(backend), profile(activities=[ProfilerActivity.CPU]) as prof:
            out = rankops.din_attention(leaves[0], leaves[1], lengths, **p, alphas=a, normalize=normalize,
                                        activation="dice", _batch_stats=stats)
            grads = torch.autograd.grad(out, leaves, grad, allow_unused=True, materialize_grads=True)
        packed = "aten::nonzero" in {e.name for e in prof.events()}
        return [out, *grads, *(t for st in stats for t in st)], packed

    got, packed = run("auto")
    want, padded_packed = run("reference")
    assert packed and not padded_packed
    for i, (a, e) in enumerate(zip(got, want)):
        assert not a.isnan().any(), i
        assert_close(a, e, atol=2e-5, rtol=2e-4, name=f"din output/grad/stat {i}")
    assert not got[0][0].any() and not got[2][3, 7:].any(), "empty samples pool to zeros, padding gets no gradient"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_din_dtypes_and_dice_stats(dtype):
    B, L, d = 3, 9, 16
    params, alphas = din_params(d, (20, 10))
    g = torch.Generator().manual_seed(2)
    q, keys = torch.randn(B, d, generator=g), torch.randn(B, L, d, generator=g)
    lengths = torch.tensor([9, 2, 5], dtype=torch.int32)
    stats = ((torch.randn(20, generator=g), torch.rand(20, generator=g) + 0.5),
             (torch.randn(10, generator=g), torch.rand(10, generator=g) + 0.5))
    want = ref.din_attention_concat(q, keys, lengths, **params, activation_kind="dice", alphas=alphas,
                                    dice_stats=stats)
    cast = {k: (v.to(dtype) if v is not None else None) for k, v in params.items()}
    got = rankops.din_attention(q.to(dtype), keys.to(dtype), lengths, **cast, activation="dice",
                                alphas=tuple(a.to(dtype) for a in alphas), dice_stats=stats)
    assert got.dtype == dtype
    # the inputs and weights are rounded to dtype before a computation in fp32
    assert_close(got, want, **tol(dtype, 3.0 if dtype != torch.float32 else 10.0), name="din")


@pytest.mark.parametrize("activation", ["sigmoid", "prelu", "dice"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("hidden", [(80, 40), (12,)], ids=["80-40", "12"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_din_inference_cpp(activation, normalize, hidden, dtype):
    """Inference (no grad) on CPU takes the fused C++ kernel: against the literal concatenation."""
    B, L, d = 5, 13, 8
    params, alphas = din_params(d, hidden)
    g = torch.Generator().manual_seed(3)
    q, keys = torch.randn(B, d, generator=g), torch.randn(B, L, d, generator=g)
    lengths = torch.tensor([0, 1, 13, 7, 4])
    stats = tuple((torch.randn(h, generator=g), torch.rand(h, generator=g) + 0.5) for h in hidden) + (None,)
    stats = stats[:2] if activation == "dice" else None
    want = ref.din_attention_concat(q.to(dtype), keys.to(dtype), lengths,
                                    **{k: (v.to(dtype) if v is not None else None) for k, v in params.items()},
                                    activation_kind=activation, normalize=normalize,
                                    alphas=tuple(a.to(dtype) if a is not None else None for a in alphas),
                                    dice_stats=stats or (None, None))
    cast = {k: (v.to(dtype) if v is not None else None) for k, v in params.items()}
    args = (q.to(dtype), keys.to(dtype), lengths)
    kw = dict(activation=activation, normalize=normalize, dice_stats=stats,
              alphas=tuple(a.to(dtype) if a is not None else None for a in alphas))
    from rankops.ops.attention import _din_native, _din_native_ok

    with on("cpp", "cpu"), torch.no_grad():
        assert _din_native_ok(args[0], args[1], list(cast.values()), activation, stats)
        got = rankops.din_attention(*args, **cast, **kw)
        direct = _din_native(*args, *cast.values(), activation, normalize, kw["alphas"], stats, 1e-8)
    assert torch.equal(got, direct)
    assert got.dtype == dtype
    assert torch.equal(got[0].float(), torch.zeros(d)), "an empty sample pools to zeros"
    assert_close(got, want, **(tol(dtype) if dtype != torch.float32 else dict(atol=1e-5, rtol=1e-4)), name="din")


def _din_case(activation, hidden, dtype, B=6, L=11, d=12, seed=4):
    params, alphas = din_params(d, hidden, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    q, keys = torch.randn(B, d, generator=g), torch.randn(B, L, d, generator=g)
    lengths = torch.tensor([0, 1, L, 7, 4, 0][:B])
    stats = tuple((torch.randn(h, generator=g), torch.rand(h, generator=g) + 0.5) for h in hidden)
    stats = (stats + (None,))[:2] if activation == "dice" else None
    cast = lambda t: t.to(dtype) if t is not None else None  # noqa: E731
    return (cast(q), cast(keys), lengths, {k: cast(v) for k, v in params.items()}, tuple(map(cast, alphas)), stats,
            torch.randn(B, d, generator=g).to(dtype))


@pytest.mark.parametrize("activation", ["sigmoid", "prelu", "dice"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("hidden", [(20, 9), (7,)], ids=["20-9", "7"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_din_training_cpp(activation, normalize, hidden, dtype):
    """Training on CPU runs the fused C++ forward and backward (the din_attention custom op): output
    and every gradient against autograd of the literal concatenation, zero and odd lengths."""
    from torch.profiler import ProfilerActivity, profile

    q, keys, lengths, params, alphas, stats, grad = _din_case(activation, hidden, dtype)
    names = [k for k, v in params.items() if v is not None]

    def run(fn, **kw):
        leaves = [t.clone().requires_grad_() for t in [q, keys] + [params[n] for n in names]
                  + [a for a in alphas if a is not None]]
        p = dict(zip(names, leaves[2:2 + len(names)]), **{k: None for k, v in params.items() if v is None})
        a = tuple(leaves[2 + len(names):]) + (None,) * (2 - len(leaves[2 + len(names):]))
        out = fn(leaves[0], leaves[1], lengths, **p, alphas=a, normalize=normalize, dice_stats=stats, **kw)
        return [out, *torch.autograd.grad(out, leaves, grad, allow_unused=True, materialize_grads=True)]

    with on("cpp", "cpu"), profile(activities=[ProfilerActivity.CPU]) as prof:
        got = run(rankops.din_attention, activation=activation)
    events = {e.name for e in prof.events()}
    assert "rankops_C::din_attention_backward" in events and "rankops_C::din_attention_inference" in events
    f32 = lambda t: t.float() if t is not None else None  # noqa: E731
    want = run(lambda q_, k_, lengths_, alphas, dice_stats, **p: ref.din_attention_concat(
        q_.float(), k_.float(), lengths_, **{k: f32(v) for k, v in p.items() if k != "normalize"},
        normalize=normalize, activation_kind=activation, alphas=tuple(map(f32, alphas)),
        dice_stats=dice_stats or (None, None)))
    for i, (a, e) in enumerate(zip(got, want)):
        assert a.dtype == dtype, i
        t = dict(atol=2e-5, rtol=2e-4) if dtype == torch.float32 else tol(dtype, 4.0)
        scale = max(1.0, e.abs().max().item())
        assert_close(a, e.to(dtype), atol=t["atol"] * scale, rtol=t["rtol"], name=f"din output/grad {i}")
    assert not got[0][0].float().any() and not got[0][-1].float().any(), "empty samples pool to zeros"
    assert not got[2][0].float().any() and not got[2][3, 7:].float().any(), "no gradient for padding keys"


@pytest.mark.parametrize("activation", ["sigmoid", "prelu", "dice"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("hidden", [(20, 9), (7,)], ids=["20-9", "7"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend,device", backend_devices("triton"))
def test_din_triton(activation, normalize, hidden, dtype, backend, device):
    """The Triton kernels (under the interpreter on CPU), forward and every gradient, against the
    PyTorch path (the reference backend, itself checked against the concatenation above) under autograd."""
    require("triton", device)
    case = _din_case(activation, hidden, dtype, B=5, L=21, d=6)
    mv = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
    q, keys, lengths, grad = (mv(t) for t in (case[0], case[1], case[2], case[6]))
    params, alphas = {k: mv(v) for k, v in case[3].items()}, tuple(map(mv, case[4]))
    stats = tuple(tuple(map(mv, st)) if st is not None else None for st in case[5]) if case[5] else None
    names = [k for k, v in params.items() if v is not None]
    args = [q, keys] + [params[n] for n in names] + [a for a in alphas if a is not None]

    def run(backend, fn):
        leaves = [t.clone().requires_grad_() for t in args]
        p = dict(zip(names, leaves[2:2 + len(names)]), **{k: None for k, v in params.items() if v is None})
        a = tuple(leaves[2 + len(names):]) + (None,) * (2 - len(leaves[2 + len(names):]))
        with rankops.use_backend(backend):
            out = fn(leaves[0], leaves[1], lengths, **p, alphas=a, normalize=normalize, dice_stats=stats,
                     activation=activation)
        return [out, *torch.autograd.grad(out, leaves, grad, allow_unused=True, materialize_grads=True)]

    from rankops.ops.attention import _din_native_ok

    with rankops.use_backend("triton"):
        assert _din_native_ok(q, keys, [], activation, stats)
    got = run("triton", rankops.din_attention)
    want = run("reference", rankops.din_attention)  # the PyTorch path, differentiated by autograd
    for i, (a, e) in enumerate(zip(got, want)):
        assert a.dtype == dtype, i
        t = dict(atol=2e-5, rtol=2e-4) if dtype == torch.float32 else tol(dtype, 4.0)
        scale = max(1.0, e.float().abs().max().item())
        assert_close(a, e, atol=t["atol"] * scale, rtol=t["rtol"], name=f"din output/grad {i}")
    assert any(g.float().abs().max() > 0 for g in got[1:]), "gradients flow"


@pytest.mark.parametrize("backend", ["cpp", "reference", "triton"])
def test_din_opcheck(backend):
    from rankops.ops.attention import _din_flat

    for activation, hidden in (("prelu", (6, 4)), ("dice", (5,)), ("sigmoid", (3,))):
        q, keys, lengths, params, alphas, stats, _ = _din_case(activation, hidden, torch.float32, B=3, L=5, d=4)
        args = list(_din_flat(q, keys, lengths, *params.values(), activation, True, alphas, stats, 1e-8))
        for i in (0, 1, 3, 4, 5, 6, 7, 8, 11, 12):
            if args[i].numel():
                args[i] = args[i].requires_grad_()
        if backend == "triton":
            require("triton", "cpu")
        with rankops.use_backend(backend):
            torch.library.opcheck(torch.ops.rankops.din_attention.default, tuple(args))


def test_din_bad_inputs():
    params, alphas = din_params(8, (6,))
    q, keys = torch.randn(2, 8), torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="lengths must be <= L"):
        rankops.din_attention(q, keys, torch.tensor([6, 1]), **params)
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        rankops.din_attention(q, keys, torch.tensor([-1, 1]), **params)
    with pytest.raises(ValueError, match="w1 must be"):
        rankops.din_attention(q[:, :4], keys[..., :4], torch.tensor([1, 1]), **params)
    with pytest.raises(ValueError, match="activation must be one of"):
        rankops.din_attention(q, keys, torch.tensor([1, 1]), **params, activation="relu")
    with pytest.raises(ValueError, match="needs alphas"):
        rankops.din_attention(q, keys, torch.tensor([1, 1]), **params, activation="prelu")


def test_din_compile_fullgraph():
    params, alphas = din_params(8, (6, 4))
    q, keys = torch.randn(3, 8), torch.randn(3, 5, 8)
    lengths = torch.tensor([5, 0, 2])
    f = lambda q, k: rankops.din_attention(q, k, lengths, **params, activation="prelu", alphas=alphas)  # noqa: E731
    assert_close(torch.compile(f, fullgraph=True)(q, keys), f(q, keys), atol=1e-5, rtol=1e-5, name="din")


# ---------------------------------------------------------------------------------------------
# the Triton kernels as the GPU will see them: compiled for sm_90a here, no GPU needed

# the largest tiles per dtype family (d = 64, Q = 64, split); the other plans were checked by hand
# with sm90_resource_usage and are smaller (Q = 1 or d = 16)
# (and one jagged, unsplit Q = 1 plan: the other branches of the same kernels)
_SM90 = [
    pytest.param("bfloat16", 64, 64, True, False, id="bf16-d64-Q64-split"),
    pytest.param("float32", 64, 64, True, False, id="fp32-d64-Q64-split"),
    pytest.param("float16", 16, 1, False, True, id="fp16-d16-Q1-jagged"),
]


@pytest.mark.parametrize("dtype,d,nq,split,jagged", _SM90)
def test_triton_compiles_for_sm90_without_spills(dtype, d, nq, split, jagged):
    """ptxas -v on the sm_90a build of the forward, dK/dV and dQ kernels: no stack frame, no spills. Runs in a subprocess: under TRITON_INTERPRET the
    kernels are interpreter objects, not compilable ones."""
    import os
    import subprocess
    import sys

    code = (f"import torch; from rankops.ops.attention.triton import sm90_resource_usage as u; "
            f"print(repr(u(torch.{dtype}, {d}, {nq}, split={split}, jagged={jagged})))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert r.returncode == 0, r.stderr[-2000:]
    usage = eval(r.stdout.strip().splitlines()[-1])  # noqa: S307 - our own repr
    assert set(usage) == {"fwd", "dkdv", "dq"}
    for kernel, line in usage.items():
        assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in line, f"{kernel}: {line}"
