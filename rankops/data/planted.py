"""Every planted data set, by name: the zoo's kinds of signal (``rankops.data.synthetic``) and the
recipes' (``synthetic_mtl``, ``synthetic_news``, ``synthetic_longtail``). Each module lists its
generators in a ``PLANTED`` dict; ``rankops train --data synthetic:NAME`` and the recipes' YAMLs
name a set here. Every generator returns an ``InMemoryDataset`` whose ``extra["prob/<task>"]`` holds
the planted probabilities (``synthetic.ceiling`` turns them into the planted model's own AUC).
"""

from __future__ import annotations

import importlib
from typing import Callable

_MODULES = ("rankops.data.synthetic", "rankops.data.synthetic_mtl", "rankops.data.synthetic_news",
            "rankops.data.synthetic_longtail")


def sets() -> dict[str, Callable]:
    """``{name: generator}`` over every module (a name defined twice is an error)."""
    out: dict[str, Callable] = {}
    for mod in _MODULES:
        for name, fn in importlib.import_module(mod).PLANTED.items():
            if name in out:
                raise RuntimeError(f"planted data set {name!r} is defined twice (second in {mod})")
            out[name] = fn
    return out


def make(name: str, **kwargs):
    """The planted data set ``name`` (its generator's keyword arguments in ``kwargs``)."""
    all_sets = sets()
    if name not in all_sets:
        raise ValueError(f"unknown planted data set {name!r}; choose one of {', '.join(sorted(all_sets))}")
    return all_sets[name](**kwargs)
