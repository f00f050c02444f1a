"""Target attention (padded, per-sample lengths), fwd and fwd+bwd, against the eager reference,
torch.compile of the reference, and torch's scaled_dot_product_attention with a boolean padding mask.

    python -m bench attention                     # CPU default: L in {100, 1000}
    python -m bench attention --full              # adds L = 10000 (GPU default)
    python -m bench attention --dtype bf16        # GPU: the dtype the kernels are built for

Cases: L in {100, 1000, 10000} x heads 4x16 and 4x64 x Q in {1, 64}. The batch shrinks as L
grows so that each case moves about the same bytes (B = B_TOKENS / L users, at least 4 on CPU),
and the lengths are uniform in [L/2, L] (seeded), so padding is real. On CPU, L = 10000 is only in
--full (minutes per case for the eager baseline on 2 cores).

Bytes and flops count the real (valid) keys, not the padding (as generative-recommenders does):
  fwd:  read q, k and v on the valid keys, write out and the fp32 lse.
  bwd:  read q, k, v (valid keys), out, dO and lse; write dq, and dk, dv on the valid keys.
  flops: fwd 4*H*d*Q*sum(len) (QK^T and PV); bwd 10*H*d*Q*sum(len) (recomputed QK^T, dV, dP, dQ, dK).
Q = 64 reading each key once per user is what the byte count assumes: its GB/s is the bandwidth
the kernel achieved if it did (a kernel that re-reads keys per candidate cannot exceed it).

DIN (op=din_attention): rankops.din_attention on the cpp backend (`cpp`: the fused C++ forward and,
in fwd+bwd, the fused C++ backward, nothing of size [B, L, H] stored; on a GPU `triton`, the Triton
forward and backward) and on the reference backend
(`pytorch-path`: the PyTorch composition with the first layer as c_q + M_q k, no [B, L, 4d]
concatenation, differentiated by autograd) against the literal concatenate-then-MLP reference
(eager and torch.compile);
B = 512 users, L = 100, d = 32, hidden (80, 40); act=prelu, and act=dice: Dice on the batch's
statistics (training), where `cpp` is the PyTorch composition with rankops.dice's C++ kernels
(statistics and gate in two passes, the backward through the statistics in two) and
`pytorch-path` the same composition with Dice in PyTorch ops. Bytes: q, keys (valid rows) and the
output; flops: the MLP as DIN defines it (4d*H1 + H1*H2 + H2 per key, x2) plus the pooling.

Written against bench/common.py (Bench, providers); run it from a checkout where the harness exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import rankops
from bench.common import providers
from rankops.ops.attention import reference

HEADS = ((4, 16), (4, 64))  # (H, d)
B_TOKENS = {"cpu": 25_600, "cuda": 2_000_000}  # B * L per case


def cost(mode: str, B: int, H: int, d: int, Q: int, total_len: int, itemsize: int) -> tuple[int, int]:
    """(bytes, flops) of one call, counted on the valid keys."""
    qo = B * H * Q * d * itemsize  # one [B, H, Q, d] tensor
    kv = total_len * H * d * itemsize  # k or v on the valid keys
    lse = B * H * Q * 4
    fwd_b = qo + 2 * kv + qo + lse + B * 8
    bwd_b = 3 * qo + 2 * kv + lse + qo + 2 * kv + B * 8  # read q, out, dO, k, v, lse; write dq, dk, dv
    fwd_f = 4 * H * d * Q * total_len
    bwd_f = 10 * H * d * Q * total_len
    if mode == "fwd":
        return fwd_b, fwd_f
    return fwd_b + bwd_b, fwd_f + bwd_f


def functions(L: int, d: int):
    """(eager reference, sdpa with a mask, rankops op), each taking (q, k, v, lengths)."""
    scale = d**-0.5

    def eager(q, k, v, lengths):
        return reference.target_attention(q, k, v, lengths, scale)[0]

    def sdpa(q, k, v, lengths):
        mask = (torch.arange(L, device=q.device)[None, :] < lengths[:, None])[:, None, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def op(q, k, v, lengths):
        return rankops.target_attention(q, k, v, lengths)

    return eager, sdpa, op


def run(bench, args) -> None:
    dtypes = getattr(args, "dtypes", None) or [torch.float32]
    dev = bench.device.type
    if bench.quick:
        Ls, Qs, heads = [100], [1, 64], HEADS[:1]
    elif dev == "cpu" and not bench.full:
        Ls, Qs, heads = [100, 1000], [1, 64], HEADS
        bench.note("CPU default grid: L in {100, 1000} (2 cores); `--full` adds L = 10000.")
    else:
        Ls, Qs, heads = [100, 1000, 10000], [1, 64], HEADS
    bench.note("op: target_attention (padded); lengths ~ U[L/2, L]; B = %d / L users; bytes/flops on valid keys."
               % B_TOKENS.get(dev, B_TOKENS["cuda"]))
    gen = torch.Generator(device="cpu").manual_seed(0)
    for c in bench.grid(dtype=dtypes, L=Ls, heads=[f"{h}x{d}" for h, d in heads], Q=Qs, mode=("fwd", "fwd+bwd")):
        dtype, L, Q, mode = c["dtype"], c["L"], c["Q"], c["mode"]
        H, d = (int(x) for x in c["heads"].split("x"))
        B = max(4, B_TOKENS.get(dev, B_TOKENS["cuda"]) // L)
        grad = mode == "fwd+bwd"
        mk = lambda *s: torch.randn(*s, generator=gen).to(bench.device, dtype).requires_grad_(grad)  # noqa: E731
        q, k, v = mk(B, H, Q, d), mk(B, H, L, d), mk(B, H, L, d)
        lengths = torch.randint(L // 2, L + 1, (B,), generator=gen).to(bench.device)
        eager, sdpa, op = functions(L, d)
        provs = providers(reference=eager, op=op, device=bench.device)
        provs = {"eager": provs.pop("eager"), "sdpa": sdpa, **provs}
        nbytes, flops = cost(mode, B, H, d, Q, int(lengths.sum()), q.element_size())
        bench.run(op="target_attention", case=dict(B=B, H=H, d=d, Q=Q, L=L), dtype=dtype, mode=mode,
                  inputs=(q, k, v, lengths), providers=provs, bytes=nbytes, flops=flops)
    if bench.wants(op="din_attention"):
        for dtype in dtypes:
            run_din(bench, dtype)


def _on_reference(fn):
    def run(*args):
        with rankops.use_backend("reference"):
            return fn(*args)

    return run


def run_din(bench, dtype) -> None:
    from rankops.ops.attention import din_attention

    B, L, d, hidden = 512, 100, 32, (80, 40)
    gen = torch.Generator(device="cpu").manual_seed(1)
    for act, mode in [(a, m) for a in ("prelu", "dice") for m in ("fwd", "fwd+bwd")]:
        if not bench.wants(act=act):
            continue
        grad = mode == "fwd+bwd"
        mk = lambda *s, sc=1.0: (torch.randn(*s, generator=gen) * sc).to(bench.device, dtype).requires_grad_(grad)  # noqa: E731
        q, keys = mk(B, d), mk(B, L, d)
        lengths = torch.randint(L // 2, L + 1, (B,), generator=gen).to(bench.device)
        w1, b1, w2, b2 = mk(hidden[0], 4 * d, sc=0.1), mk(hidden[0]), mk(hidden[1], hidden[0], sc=0.1), mk(hidden[1])
        wo, bo, a1, a2 = mk(1, hidden[1], sc=0.1), mk(1), mk(hidden[0], sc=0.1), mk(hidden[1], sc=0.1)

        def concat(q, keys, w1, b1, w2, b2, wo, bo, a1, a2):
            return reference.din_attention_concat(q, keys, lengths, w1, b1, w2, b2, wo, bo, act, False, (a1, a2))

        def fused(q, keys, w1, b1, w2, b2, wo, bo, a1, a2):
            return din_attention(q, keys, lengths, w1, b1, w2, b2, wo, bo, activation=act, alphas=(a1, a2))

        provs = providers(reference=concat, op=fused, device=bench.device, backends=("cpp", "triton", "cuda"))
        provs["pytorch-path"] = _on_reference(fused)
        n = int(lengths.sum())
        isz = q.element_size()
        mlp = 2 * n * (4 * d * hidden[0] + hidden[0] * hidden[1] + hidden[1]) + 2 * n * d
        nbytes = (B * d + n * d + B * d) * isz * (1 if mode == "fwd" else 3)
        bench.run(op="din_attention", case=dict(B=B, L=L, d=d, hidden="80-40", act=act), dtype=dtype, mode=mode,
                  inputs=(q, keys, w1, b1, w2, b2, wo, bo, a1, a2), providers=provs, bytes=nbytes,
                  flops=mlp * (1 if mode == "fwd" else 3))


if __name__ == "__main__":  # python bench/attention.py [args]: the same as python -m bench attention
    import sys

    from bench.__main__ import main

    sys.exit(main(["attention", *sys.argv[1:]]))
