"""The interaction family: FM second-order term (reduce=True) and DLRM dot interaction
(self_interaction=False), fwd and fwd+bwd, against eager / torch.compile of the reference.

Cases: B in {256, 4096, 65536} x F in {26, 39} x D in {16, 64, 128}; B=256 is a serving batch,
where a call's fixed costs show. On CPU the default is B in {256, 4096} (the machines here have 2
cores); --full runs everything; --quick runs only B=4096, F=39, D=16.

Providers: eager and compile (the reference), cpp / cuda / triton (the rankops op), and in fwd
`cpp-custom-op`: the same cpp kernel called as torch.ops.rankops.<op>, through torch.library's
dispatch, which a plain eager rankops call skips (rankops/ops/_dispatch.py).

Bytes each mode must move (elements x dtype size; P = F(F-1)/2 pairs):
  fm  fwd: read x [B,F,D], write out [B,1]     bwd: read x and grad [B,1], write grad_x [B,F,D]
  dot fwd: read x [B,F,D], write out [B,P]     bwd: read x and grad [B,P], write grad_x [B,F,D]
  fwd+bwd = fwd + bwd.
Flops: fm fwd 3BFD + 3BD, bwd 3BFD; dot fwd 2BPD, bwd 4BPD (useful work, the lower triangle only).
"""

from __future__ import annotations

import torch

import rankops
from bench.common import providers
from rankops.ops.interaction import reference

OPS = ("fm_interaction", "dot_interaction")


def cost(op: str, mode: str, B: int, F: int, D: int, itemsize: int) -> tuple[int, int]:
    """(bytes, flops) the mode must move / compute."""
    x = B * F * D
    if op == "fm_interaction":
        out = B
        fwd_b, bwd_b = (x + out) * itemsize, (x + out + x) * itemsize
        fwd_f, bwd_f = 3 * x + 3 * B * D, 3 * x
    else:
        P = F * (F - 1) // 2
        out = B * P
        fwd_b, bwd_b = (x + out) * itemsize, (x + out + x) * itemsize
        fwd_f, bwd_f = 2 * B * P * D, 4 * B * P * D
    if mode == "fwd":
        return fwd_b, fwd_f
    return fwd_b + bwd_b, fwd_f + bwd_f


def functions(op: str):
    """(reference, rankops op) taking x alone."""
    if op == "fm_interaction":
        return (lambda x: reference.fm_interaction(x, True)), (lambda x: rankops.fm_interaction(x, True))
    return (lambda x: reference.dot_interaction(x, False)), (lambda x: rankops.dot_interaction(x, False))


def custom_op(op: str):
    """The cpp kernel through its torch.library custom op (torch.ops.rankops.<op>)."""
    fn = getattr(torch.ops.rankops, op)
    arg = op == "fm_interaction"  # reduce=True / self_interaction=False

    def call(x):
        with rankops.use_backend("cpp"):
            return fn(x, arg)

    return call


def run(bench, args) -> None:
    dtypes = getattr(args, "dtypes", None) or [torch.float32]
    if bench.quick:
        Bs, Fs, Ds = [4096], [39], [16]
    elif bench.device.type == "cpu" and not bench.full:
        Bs, Fs, Ds = [256, 4096], [26, 39], [16, 64, 128]
        bench.note("CPU default grid: B in {256, 4096} (few cores); `--full` adds B=65536.")
    else:
        Bs, Fs, Ds = [256, 4096, 65536], [26, 39], [16, 64, 128]
    bench.note("ops: fm_interaction(reduce=True), dot_interaction(self_interaction=False); x ~ N(0,1).")
    gen = torch.Generator(device="cpu").manual_seed(0)
    for c in bench.grid(op=OPS, dtype=dtypes, B=Bs, F=Fs, D=Ds, mode=("fwd", "fwd+bwd")):
        op, dtype, mode = c["op"], c["dtype"], c["mode"]
        B, F, D = c["B"], c["F"], c["D"]
        x = torch.randn(B, F, D, generator=gen).to(bench.device, dtype).requires_grad_(mode == "fwd+bwd")
        ref, public = functions(op)
        nbytes, flops = cost(op, mode, B, F, D, x.element_size())
        provs = providers(reference=ref, op=public, device=bench.device)
        if mode == "fwd" and "cpp" in provs:
            provs["cpp-custom-op"] = custom_op(op)
        bench.run(op=op, case=dict(B=B, F=F, D=D), dtype=dtype, mode=mode, inputs=(x,), providers=provs,
                  bytes=nbytes, flops=flops)
