"""Builds rankops._C by running CMake (CMakeLists.txt is the one description of the build).

    pip install --no-build-isolation -e .      # or: python setup.py build_ext --inplace

Environment: RANKOPS_WITH_CUDA=AUTO|ON|OFF, RANKOPS_CUDA_ARCHS="80;90", MAX_JOBS=<n>,
RANKOPS_BUILD_NATIVE=0 (install the pure-Python package: reference and Triton backends only).

Without a C++ compiler, CMake or ninja, or torch at build time, the native extension is skipped
with one notice and the pure-Python package is installed; rankops.info() then says which
backends the install has. A build that starts and fails still fails.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _find_tool(module: str, attr: str, name: str) -> str | None:
    """The pip-installed cmake / ninja when present (newer than the OS one), else PATH's."""
    try:
        mod = __import__(module)
        path = Path(getattr(mod, attr)) / name
        if path.exists():
            return str(path)
    except Exception:
        pass
    return shutil.which(name)


def _tool(module: str, attr: str, name: str) -> str:
    found = _find_tool(module, attr, name)
    if not found:
        raise RuntimeError(f"{name} is needed to build rankops._C: pip install {module}")
    return found


def _cxx() -> str | None:
    want = os.environ.get("CXX")
    if want:
        return shutil.which(want)
    return next((shutil.which(c) for c in ("c++", "g++", "clang++") if shutil.which(c)), None)


def skip_native() -> str | None:
    """Why rankops._C will not be built here (None: it will be)."""
    if os.environ.get("RANKOPS_BUILD_NATIVE", "1").strip().lower() in ("0", "off", "false", "no"):
        return "RANKOPS_BUILD_NATIVE=0"
    missing = []
    if _cxx() is None:
        missing.append(f"a C++ compiler ({os.environ['CXX']!r} from $CXX)" if os.environ.get("CXX")
                       else "a C++ compiler (c++, g++ or clang++)")
    missing += [name for module, attr, name in (("cmake", "CMAKE_BIN_DIR", "cmake"), ("ninja", "BIN_DIR", "ninja"))
                if _find_tool(module, attr, name) is None]
    try:
        import torch  # noqa: F401
    except ImportError:
        missing.append("torch (importable at build time: pip install --no-build-isolation)")
    return "missing " + ", ".join(missing) if missing else None


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        cmake = _tool("cmake", "CMAKE_BIN_DIR", "cmake")
        cfg = [
            cmake,
            "-S", str(ROOT),
            "-B", str(build_dir),
            "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={_tool('ninja', 'BIN_DIR', 'ninja')}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DRANKOPS_WITH_CUDA={os.environ.get('RANKOPS_WITH_CUDA', 'AUTO')}",
        ]
        if os.environ.get("RANKOPS_CUDA_ARCHS"):
            cfg.append(f"-DRANKOPS_CUDA_ARCHS={os.environ['RANKOPS_CUDA_ARCHS']}")
        nvcc = shutil.which("nvcc") or next(
            (str(p) for p in (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc",) if p.exists()), None
        )
        if nvcc:
            cfg.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        subprocess.check_call(cfg)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call([cmake, "--build", str(build_dir), "-j", jobs])


_skip = skip_native()


class BuildPy(build_py):
    """build_py, saying once per build (pip runs setup.py several times) that rankops._C is skipped."""

    def run(self) -> None:
        if _skip:
            print(f"rankops: NOTICE: installing the pure-Python package without the native extension rankops._C "
                  f"({_skip}): the reference and Triton backends work, the cpp and cuda backends are absent "
                  "(rankops.info() lists them). To build them install a C++ compiler, cmake and ninja and reinstall.",
                  file=sys.stderr)
        super().run()


setup(
    # models/ (the zoo) sits at the top of the repository and is installed as rankops.models
    packages=find_packages(include=["rankops", "rankops.*"]) + ["rankops.models", "rankops.models.recipes"],
    package_dir={"rankops.models": "models"},
    package_data={"rankops": ["auto_order.json"], "rankops.models.recipes": ["*.yaml"]},
    ext_modules=[] if _skip else [Extension("rankops._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild, "build_py": BuildPy},
)
