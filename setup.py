"""Builds rankops._C by running CMake (CMakeLists.txt is the one description of the build).

    pip install --no-build-isolation -e .      # or: python setup.py build_ext --inplace

Environment: RANKOPS_WITH_CUDA=AUTO|ON|OFF, RANKOPS_CUDA_ARCHS="80;90", MAX_JOBS=<n>.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _tool(module: str, attr: str, name: str) -> str:
    """The pip-installed cmake / ninja when present (newer than the OS one), else PATH's."""
    try:
        mod = __import__(module)
        return str(Path(getattr(mod, attr)) / name)
    except Exception:
        found = shutil.which(name)
        if not found:
            raise RuntimeError(f"{name} is needed to build rankops._C: pip install {module}")
        return found


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


setup(
    packages=find_packages(include=["rankops", "rankops.*"]),
    ext_modules=[Extension("rankops._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
)
