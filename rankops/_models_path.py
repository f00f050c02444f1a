"""``rankops.models`` from a source checkout.

The zoo lives in ``models/`` at the top of the repository and is installed as ``rankops.models``
(setup.py maps the package there). Run from a checkout, nothing is installed: this finder maps the
one name ``rankops.models`` (and its submodules, through the package's own path) to that folder.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_SOURCE = Path(__file__).resolve().parent.parent / "models"


class _ModelsFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "rankops.models" or not (_SOURCE / "__init__.py").is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, _SOURCE / "__init__.py",
                                                      submodule_search_locations=[str(_SOURCE)])


# an installed rankops.models (a real subpackage) wins: the finder only runs when none is found
if not (Path(__file__).resolve().parent / "models").is_dir() and not any(
        isinstance(f, _ModelsFinder) for f in sys.meta_path):
    sys.meta_path.append(_ModelsFinder())
