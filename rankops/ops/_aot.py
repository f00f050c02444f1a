"""Ahead-of-time compile specs of Triton kernels, for scripts/gpu_report.py (registers, spills,
shared memory on sm_90a, without a GPU). A family's triton.py lists its specs in ``aot_specs()``."""

from __future__ import annotations

import torch

SIG = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def spec(fn, config: str, args: list, constexprs: dict, num_warps: int = 4, num_stages: int = 3) -> dict:
    """One (kernel, config). args: [(name, type, value)] in the kernel's order, value None for
    pointers (torch's allocations are 16-byte aligned). Integers divisible by 16 get the
    divisibility hint the JIT gives them at launch, so the AOT compile matches what runs."""
    signature, attrs = {}, {}
    for idx, (name, ty, value) in enumerate(args):
        signature[name] = ty
        if ty.startswith("*") or value % 16 == 0:
            attrs[(idx,)] = [["tt.divisibility", 16]]
    signature.update({name: "constexpr" for name in constexprs})
    return dict(kernel=fn.__name__, fn=fn, config=config, signature=signature, constexprs=dict(constexprs),
                attrs=attrs, num_warps=num_warps, num_stages=num_stages)
