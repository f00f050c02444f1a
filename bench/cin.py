"""CIN (xDeepFM), fwd and fwd+bwd: rankops against DeepCTR-Torch's einsum + Conv1d CIN (eager) and its
torch.compile, with the peak memory of each.

    python -m bench cin                          # M=39, D=16, layers 200-200-200, B=4096 (+ B=65536 on a GPU)

Providers: eager = bench.baselines.DCCIN (DeepCTR-Torch's CIN: the outer product Z = X^k (x) X^0
[B, H*M, D] materialised by einsum, then Conv1d(H*M, Hn, 1), relu, split_half), compile =
torch.compile of it, and the rankops backends: rankops.nn.CIN (cin_layer, Z never formed) on the
same parameters (DeepCTR's Conv1d weight [Hn, H*M, 1] viewed as [Hn, H, M]). The parameters are
inputs, so fwd+bwd differentiates them too, as in training.

peak_MiB: the most memory live in torch's allocators during one call above what was live before
it (bench.common.peak_memory): saved activations, temporaries and gradients. The cpp kernel's
per-thread scratch (std::vector, about 1 MB a thread here) is outside it.

flops: 2*B*D*Hn*H*M per layer forward (the products and the 1x1 convolution), 3x for fwd+bwd.
bytes: read x and the parameters, write the [B, output_dim] result (fwd); plus read grad_out and
write the gradients (fwd+bwd).
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from bench.baselines import DCCIN
from bench.common import providers
from rankops.nn import CIN

M, D, SIZES = 39, 16, (200, 200, 200)


def _hidden(sizes):
    """H_k, the maps entering each layer (split_half: half of each non-final layer goes on)."""
    H, out = M, []
    for k, s in enumerate(sizes):
        out.append(H)
        H = s // 2 if k < len(sizes) - 1 else s
    return out


def functions(dtype, device):
    """(eager, rankops) taking (x, w0, b0, w1, b1, ...) with DeepCTR's Conv1d parameter layout."""
    dc = DCCIN(M, SIZES).to(device, dtype)
    ours = CIN(M, SIZES, device=device, dtype=dtype)
    hs = _hidden(SIZES)

    def eager(x, *params):
        names = [f"conv1ds.{k}.{n}" for k in range(len(SIZES)) for n in ("weight", "bias")]
        return functional_call(dc, dict(zip(names, params)), (x,))

    def fused(x, *params):
        p = {}
        for k, (w, b) in enumerate(zip(params[::2], params[1::2])):
            p[f"weights.{k}"], p[f"biases.{k}"] = w.view(w.shape[0], hs[k], M), b
        return functional_call(ours, p, (x,))

    return dc, eager, fused


def run(bench, args) -> None:
    dtypes = getattr(args, "dtypes", None) or [torch.float32]
    Bs = [4096] + ([65536] if bench.device.type == "cuda" and not bench.quick else [])
    bench.note("op: cin; eager = DeepCTR-Torch's CIN (einsum + Conv1d, bench/baselines.py); rankops = "
               "rankops.nn.CIN on the same parameters; peak_MiB = torch allocators' peak during one call.")
    gen = torch.Generator(device="cpu").manual_seed(0)
    hs = _hidden(SIZES)
    for c in bench.grid(dtype=dtypes, B=Bs, mode=("fwd", "fwd+bwd")):
        dtype, B, mode = c["dtype"], c["B"], c["mode"]
        grad = mode == "fwd+bwd"
        dc, eager, fused = functions(dtype, bench.device)
        x = torch.randn(B, M, D, generator=gen).to(bench.device, dtype)
        params = [p.detach().clone() for p in dc.parameters()]
        inputs = tuple(t.requires_grad_(grad) for t in [x, *params])
        provs = providers(reference=eager, op=fused, device=bench.device)
        isz = x.element_size()
        out_dim = sum(s // 2 for s in SIZES[:-1]) + SIZES[-1]
        nparam = sum(p.numel() for p in params)
        nbytes = (x.numel() + nparam + B * out_dim) * isz * (1 if mode == "fwd" else 2)
        flops = sum(2 * B * D * s * h * M for s, h in zip(SIZES, hs)) * (1 if mode == "fwd" else 3)
        bench.run(op="cin", case=dict(B=B, M=M, D=D, layers="-".join(map(str, SIZES))), dtype=dtype, mode=mode,
                  inputs=inputs, providers=provs, bytes=nbytes, flops=flops, memory=True)


if __name__ == "__main__":  # python bench/cin.py [args]: the same as python -m bench cin
    import sys

    from bench.__main__ import main

    sys.exit(main(["cin", *sys.argv[1:]]))
