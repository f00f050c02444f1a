"""Route a call to the implementation of the selected backend.

Each op family lists its implementations as ``{backend: "module:function"}``; modules are imported
on first use so that importing rankops never imports triton or loads the extension eagerly.
"""

from __future__ import annotations

import functools
import importlib
from typing import Callable

import torch

from rankops import backend as _backend


@functools.lru_cache(maxsize=None)
def _resolve(path: str) -> Callable:
    module, _, fn = path.partition(":")
    if module == "torch.ops":  # a kernel of the compiled extension, e.g. "torch.ops:rankops_C.fm_fwd"
        _backend.extension()  # loading the extension registers its ops
        ns, _, name = fn.partition(".")
        return getattr(getattr(torch.ops, ns), name)
    return getattr(importlib.import_module(module), fn)


def call(op: str, impls: dict[str, str], device: torch.device, *args):
    """Run ``op`` with the backend chosen for ``device``."""
    name = _backend.select(op, device, tuple(impls))
    return _resolve(impls[name])(*args)


def direct(*tensors) -> bool:
    """Whether a call may run its implementation directly rather than through its torch.library
    custom op, whose Python dispatch costs about 30 us a call (as long as a small serving batch's
    lookups): only in plain eager inference. Not while torch.compile traces, not under a dispatch
    mode (fake tensors, functionalization, tracers) or a torch.func transform, not for tensor
    subclasses, and not when autograd has anything to record; those take the custom op."""
    if torch.compiler.is_compiling():
        return False
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        if _get_current_dispatch_mode() is not None or torch._C._functorch.peek_interpreter_stack() is not None:
            return False
    except (ImportError, AttributeError):  # a torch without these internals: stay on the safe path
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
            return False
        if grad and t.requires_grad:
            return False
    return True
