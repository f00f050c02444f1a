"""Route a call to the implementation of the selected backend.

Each op family lists its implementations as ``{backend: "module:function"}``; modules are imported
on first use so that importing rankops never imports triton or loads the extension eagerly.
Families declare their ops with ``rankops.ops._declare``, which calls them through ``invoke``: it
skips the torch.library dispatch where nothing needs to see the op (``direct``).
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


def invoke(op, *args):
    """``op(*args)``, or the op's implementation itself (``op.impl``) where direct() allows: the custom op's
    Python dispatch costs about 30 us a call, as long as a small serving batch's whole op."""
    return op.impl(*args) if direct(*(a for a in args if isinstance(a, torch.Tensor))) else op(*args)


def _internals():
    """A function telling whether a dispatch mode or a torch.func transform is active; None on a
    torch without these internals (then nothing takes the direct path)."""
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        peek = torch._C._functorch.peek_interpreter_stack
    except (ImportError, AttributeError):
        return None
    return lambda: _get_current_dispatch_mode() is not None or peek() is not None


_watched = _internals()


def eager(*tensors) -> bool:
    """Whether a call on these tensors is plain eager work that nothing but autograd watches: not
    while torch.compile or torch.jit traces, not under a dispatch mode (fake tensors,
    functionalization) or a torch.func transform, not for tensor subclasses."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or _watched is None or _watched():
        return False
    return all(t is None or type(t) is torch.Tensor or type(t) is torch.nn.Parameter for t in tensors)


def direct(*tensors) -> bool:
    """Whether a call on these tensors may skip its torch.library custom op and autograd: plain
    eager work (``eager``) that autograd would not record (grad mode off or no input requiring grad)."""
    if not eager(*tensors):
        return False
    if torch.is_grad_enabled():
        return not any(t is not None and t.requires_grad for t in tensors)
    return True
