"""The machinery of rankops.patch: the registry of recognised classes, the walk over a model, and
the undo log that lets unpatch() restore every layer exactly.

A handler is registered for one class, named by its module and qualified name (never recognised by
its attributes). Given an instance, it either says why it must be left alone or returns the
replacement methods (``{"forward": fn}``) that compute with rankops ops on the instance's own
Parameter objects. The replacements are set as instance attributes, so the class, every other
instance, the parameters and the state dict stay as they were; unpatch() deletes them again.
"""

from __future__ import annotations

import fnmatch
import functools
import types
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from rankops import backend as _backend
from rankops.patch.report import PatchReport

# Libraries whose layers the report lists as "not covered" when no handler knows them.
PEER_PACKAGES = ("deepctr_torch", "torchrec", "torch_rechub")


class Leave(Exception):
    """Raised by a handler's ``make`` for a configuration it does not reproduce exactly; the
    message is the reason the report gives."""


@dataclass
class Handler:
    """How to patch instances of one class.

    ``make(module) -> (replacements, detail, undo)``: the methods to set on the instance, a short
    description of what now runs them, and a callable that undoes any other change (or None).
    It raises Leave(reason) for an unsupported configuration, before changing anything.
    """

    cls_path: str
    make: Callable
    methods: tuple[str, ...] = ("forward",)


REGISTRY: dict[str, Handler] = {}


def register(cls_path: str, methods: tuple[str, ...] = ("forward",)):
    """Decorator: ``make`` patches instances of the class ``cls_path`` ("package.module.Class")."""

    def deco(make):
        REGISTRY[cls_path] = Handler(cls_path, make, methods)
        return make

    return deco


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def find_handler(module: nn.Module) -> tuple[Optional[Handler], str]:
    """The handler of the nearest registered class in the module's MRO, and '' or the reason it
    cannot serve this module (a subclass that overrides a method the handler replaces)."""
    for klass in type(module).__mro__:
        h = REGISTRY.get(class_path(klass))
        if h is None:
            continue
        for m in h.methods:
            if getattr(type(module), m, None) is not getattr(klass, m, None):
                return h, f"{type(module).__qualname__} overrides {klass.__qualname__}.{m}"
        return h, ""
    return None, ""


# ---------------------------------------------------------------------------------------------
# the undo log: module -> [(attribute, previous value or _MISSING)], module -> [undo callables]

_MISSING = object()
_SET: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()
_UNDO: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()


def is_patched(module: nn.Module) -> bool:
    return module in _SET


_OP_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the rankops ops take


def _unsupported_dtype(module: nn.Module, args) -> bool:
    """float64 (or another dtype the ops refuse) in the layer's parameters or tensor inputs: the
    library's own code serves that call."""
    p = next(module.parameters(), None)
    if p is not None and p.dtype not in _OP_DTYPES:
        return True
    return any(isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype not in _OP_DTYPES for a in args)


def _wrap(fn: Callable, original: Callable, backend: Optional[str], owner: nn.Module) -> Callable:
    owner_ref = weakref.ref(owner)

    @functools.wraps(fn)
    def patched(self, *args, **kwargs):
        # A copy of the module (copy.deepcopy, pickling) carries this method but not the state it
        # was made for (stacked tables, plans): the copy runs the library's code until patched itself.
        if self is not owner_ref() or _unsupported_dtype(self, args):
            return original(self, *args, **kwargs)
        if backend is None:
            return fn(self, *args, **kwargs)
        with _backend.use_backend(backend):
            return fn(self, *args, **kwargs)

    patched._rankops_patch = True
    return patched


def _ours(value) -> bool:
    """A method this module set (possibly on the module a copy was made from)."""
    return bool(getattr(getattr(value, "__func__", None), "_rankops_patch", False))


def _install(module: nn.Module, replacements: dict, undo: Optional[Callable], backend: Optional[str]) -> None:
    log = []
    for name, fn in replacements.items():
        prev = module.__dict__.get(name, _MISSING)
        log.append((name, _MISSING if _ours(prev) else prev))
        original = getattr(type(module), name)
        # a bound method on the instance: nn.Module.__call__ (and torch.compile) find it first
        object.__setattr__(module, name, types.MethodType(_wrap(fn, original, backend, module), module))
    _SET[module] = log
    if undo is not None:
        _UNDO.setdefault(module, []).append(undo)


def restore(module: nn.Module) -> bool:
    """Undo the patch of one module; False when it was not patched."""
    log = _SET.pop(module, None)
    if log is None:
        return False
    for name, prev in reversed(log):
        if prev is _MISSING:
            module.__dict__.pop(name, None)
        else:
            object.__setattr__(module, name, prev)
    for undo in reversed(_UNDO.pop(module, [])):
        undo()
    return True


# ---------------------------------------------------------------------------------------------
# the walk


def _matches(patterns: Iterable[str], path: str, module: nn.Module) -> bool:
    names = {path, type(module).__qualname__, class_path(type(module))}
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


def _is_compute_layer(module: nn.Module) -> bool:
    """A peer-library module worth a 'not covered' line: one with its own parameters or no children
    (a model or an arch that only composes other layers is not listed)."""
    return bool(module._parameters) or not any(True for _ in module.children())


def walk(model: nn.Module, backend: Optional[str], include, exclude) -> PatchReport:
    if backend is not None:
        _backend._validate(backend)
    report = PatchReport(backend=backend)
    include = [include] if isinstance(include, str) else include
    exclude = [exclude] if isinstance(exclude, str) else (exclude or [])
    for path, module in model.named_modules():
        handler, why = find_handler(module)
        cls = class_path(type(module))
        if handler is None:
            if cls.split(".")[0] in PEER_PACKAGES and _is_compute_layer(module):
                report.add(path, cls, "not covered", "no rankops kernel for this layer")
            continue
        if why:
            report.add(path, cls, "left", why)
            continue
        if is_patched(module):
            report.add(path, cls, "patched", "already patched")
            continue
        if (include is not None and not _matches(include, path, module)) or _matches(exclude, path, module):
            report.add(path, cls, "excluded", "by include / exclude")
            continue
        try:
            replacements, detail, undo = handler.make(module)
        except Leave as e:
            report.add(path, cls, "left", str(e))
            continue
        _install(module, replacements, undo, backend)
        report.add(path, cls, "patched", detail)
    return report


def unwalk(model: nn.Module) -> int:
    """Restore every patched module under ``model`` (children first); the number restored."""
    n = 0
    for module in reversed(list(model.modules())):
        n += restore(module)
    return n
