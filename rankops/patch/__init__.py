"""rankops.patch(model): the layers of DeepCTR-Torch, TorchRec and torch-rechub models compute with
rankops ops, on the layers' own Parameter objects.

    report = rankops.patch(model)     # model: a deepctr_torch / torchrec / torch_rechub model
    print(report)                     # what was patched, what was left and why
    ...                               # train with the library's own loop, save, load: unchanged
    rankops.unpatch(model)            # back to the library's code, bit for bit

Layers are recognised by class (module and qualified name, through the MRO; a subclass that
overrides the method rankops would replace is left alone). A recognised layer whose configuration
rankops does not reproduce exactly is left untouched and listed with the reason. Nothing is added
to or removed from the model's parameters, buffers or state dict; the replacements are instance
attributes (``layer.forward``), and per-feature embedding tables become views of one stacked buffer
(the same Parameter objects), which unpatch() gives their own storage again.

One file per library: ``deepctr.py``, ``torchrec.py``, ``rechub.py``; each module's docstring lists its
layers and the rankops op that now serves each.
"""

from __future__ import annotations

from typing import Iterable, Optional, Union

from torch import nn

from rankops.patch import _core
from rankops.patch import deepctr as _deepctr  # noqa: F401  (each registers its handlers)
from rankops.patch import rechub as _rechub  # noqa: F401
from rankops.patch import torchrec as _torchrec  # noqa: F401
from rankops.patch.report import Entry, PatchReport

Patterns = Union[str, Iterable[str], None]


def patch(model: nn.Module, *, backend: Optional[str] = None, include: Patterns = None,
          exclude: Patterns = None) -> PatchReport:
    """Make every layer of ``model`` that rankops recognises compute with rankops ops.

    Args:
        model: any nn.Module; its DeepCTR-Torch, TorchRec and torch-rechub layers are patched.
        backend: pin the patched layers to one rankops backend ("cpp", "cuda", "triton",
            "reference"); None: rankops' default choice per call (``rankops.use_backend`` still works).
        include: patch only layers matching one of these (fnmatch patterns on the layer's path in
            ``model.named_modules()``, its class name, or its full class path).
        exclude: never patch layers matching one of these (same patterns).
    Returns:
        a PatchReport: one entry per recognised layer (patched / left with the reason / excluded)
        and per peer-library layer rankops does not cover. ``print(report)`` shows the table.

    Patching twice is harmless (a patched layer is reported as already patched).
    """
    return _core.walk(model, backend, include, exclude)


def unpatch(model: nn.Module) -> int:
    """Undo ``patch`` on every layer of ``model``: the library's own code runs again, with the same
    parameter values (each embedding table in its own storage again). Returns the number of layers
    restored."""
    return _core.unwalk(model)


__all__ = ["Entry", "PatchReport", "patch", "unpatch"]
