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
