"""`pip install .` without the native build: RANKOPS_BUILD_NATIVE=0, or no C++ compiler. The
pure-Python package installs with one notice, imports, serves ops on the reference backend, and
rankops.info() says which backends the install has.

The venv is clean but for one .pth line making this environment's torch (and setuptools) importable,
so nothing is downloaded; the package is installed with this environment's pip (``pip --python``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = """
import importlib.util, sys, torch, rankops
assert rankops.__file__.startswith(sys.prefix), rankops.__file__
assert importlib.util.find_spec("rankops._C") is None
text = rankops.info()
assert "pure-Python install" in text and "installed backends: reference" in text, text
assert "cpp" not in text.split("installed backends:")[1].splitlines()[0].split("(")[0]
x = torch.randn(3, 4, 5)
torch.testing.assert_close(rankops.fm_interaction(x), 0.5 * (x.sum(1) ** 2 - (x ** 2).sum(1)).sum(1, keepdim=True))
import rankops.models as zoo
from rankops.data.synthetic import random_batch
assert zoo.__file__.startswith(sys.prefix), zoo.__file__  # the installed package, not a checkout's models/
schema = {"sparse": [{"name": "a", "vocab_size": 5, "embedding_dim": 4}, {"name": "b", "vocab_size": 3, "embedding_dim": 4}]}
m = zoo.build("deepfm", schema, dnn_hidden_units=(8,))
assert m(random_batch(m.schema, 6)).shape == (6, 1)
"""


def _source(dst: Path) -> Path:
    """What a pure-Python install reads, without build outputs (no rankops/_C*.so)."""
    dst.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dst / name)
    shutil.copytree(ROOT / "rankops", dst / "rankops", ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    shutil.copytree(ROOT / "models", dst / "models", ignore=shutil.ignore_patterns("__pycache__"))
    return dst


@pytest.mark.parametrize("how", ["RANKOPS_BUILD_NATIVE=0", "no compiler"])
def test_pure_python_install(tmp_path, how):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    Path(site, "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    env |= {"RANKOPS_BUILD_NATIVE": "0"} if how.startswith("RANKOPS") else {"CXX": "/nonexistent/c++"}
    src = _source(tmp_path / "src")
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-v", "--no-compile",
                          "--no-build-isolation", "--no-deps", "--no-index", str(src)],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    log = pip.stdout + pip.stderr
    assert log.count("rankops: NOTICE") == 1, log[-3000:]
    assert ("RANKOPS_BUILD_NATIVE=0" if how.startswith("RANKOPS") else "missing a C++ compiler") in log
    run = subprocess.run([py, "-c", CHECK], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
