"""scripts/gpu_report.py: the ptxas parser on real captured output, and one real Triton AOT compile.

The AOT compile runs in a subprocess without TRITON_INTERPRET (which conftest sets for the kernel
tests, and which would turn triton.compile's front end into the interpreter's).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_report.py")

# Captured from `nvcc -std=c++17 -O3 -gencode=arch=compute_90,code=sm_90 -Xptxas -v -c t.cu` (nvcc
# 13.0) on a test file with a plain kernel, a dynamic-smem kernel and a register-starved template
# (__launch_bounds__(1024, 2), 96 live floats) that spills.
NVCC_SAMPLE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z3dynPf' for 'sm_90'
ptxas info    : Function properties for _Z3dynPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 1 barriers
ptxas info    : Compile time = 13.013 ms
ptxas info    : Compiling entry function '_Z5heavyILi96EEvPKfPfi' for 'sm_90'
ptxas info    : Function properties for _Z5heavyILi96EEvPKfPfi
    624 bytes stack frame, 856 bytes spill stores, 1160 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 624 bytes cumulative stack size, 1024 bytes smem
ptxas info    : Compile time = 248.134 ms
ptxas info    : Compiling entry function '_Z5plainPf' for 'sm_90'
ptxas info    : Function properties for _Z5plainPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers
ptxas info    : Compile time = 6.058 ms
"""

# Older ptxas layout (cmem on the "Used" line) and a non-inlined device function whose spills
# belong to the entry that calls it.
OLD_SAMPLE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z1kPf' for 'sm_80'
ptxas info    : Function properties for _Z6helperv
    16 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Function properties for _Z1kPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, 2048 bytes smem, 356 bytes cmem[0]
"""


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("gpu_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    interp = os.environ.get("TRITON_INTERPRET")
    try:
        spec.loader.exec_module(mod)  # it pops TRITON_INTERPRET: put it back for the other tests
    finally:
        if interp is not None:
            os.environ["TRITON_INTERPRET"] = interp
    return mod


def test_parse_nvcc_output_finds_the_spill(report):
    rows = {k["name"]: k for k in report.parse_ptxas(NVCC_SAMPLE)}
    assert list(rows) == ["_Z3dynPf", "_Z5heavyILi96EEvPKfPfi", "_Z5plainPf"]
    heavy = rows["_Z5heavyILi96EEvPKfPfi"]
    assert (heavy["registers"], heavy["smem"], heavy["stack"]) == (32, 1024, 624)
    assert (heavy["spill_stores"], heavy["spill_loads"]) == (856, 1160)
    assert report.spills(heavy) > 0
    assert rows["_Z3dynPf"]["registers"] == 10 and report.spills(rows["_Z3dynPf"]) == 0
    assert rows["_Z5plainPf"]["arch"] == "sm_90"
    assert [report.spills(k) > 0 for k in report.parse_ptxas(NVCC_SAMPLE)] == [False, True, False]


def test_parse_old_layout_and_device_function_spills(report):
    (k,) = report.parse_ptxas(OLD_SAMPLE)
    assert (k["name"], k["registers"], k["smem"]) == ("_Z1kPf", 40, 2048)
    assert (k["spill_stores"], k["spill_loads"]) == (8, 8)


def test_table_marks_spills_and_failures(report):
    rows = [dict(source="cuda", family="x", kernel="k", config="sm_90", registers=32, smem=0,
                 spill_stores=8, spill_loads=0, ok=True),
            dict(source="triton", family="x", kernel="t", config="c", ok=False, error="boom")]
    table = report.format_table(rows)
    assert "SPILLS" in table and "COMPILE FAILED" in table


def test_occupancy(report):
    assert report.occupancy(32, 0, 4) == 64  # 32 regs: the full 2048 threads
    assert report.occupancy(128, 0, 4) == 16  # 128 regs * 128 threads = 16K: 4 programs
    assert report.occupancy(40, 100 * 1024, 4) == 8  # shared memory: 2 programs of 100 KB
    assert report.occupancy(None, 0, 4) is None


def test_discovers_interaction(report):
    assert ("interaction", "rankops.ops.interaction.triton") in report.discover_families()


def test_triton_aot_of_one_interaction_kernel(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, SCRIPT, "--family", "interaction", "--kernel", "_fm_fwd_kernel", "--limit", "1",
         "--no-cuda", "--jobs", "1", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["ok"], rows
    assert rows[0]["kernel"] == "_fm_fwd_kernel" and rows[0]["registers"] > 0
    assert rows[0]["spill_stores"] == 0
    assert "gpu_report: 1 kernels" in run.stdout


SPILLING_CU = r"""
template <int N>
__global__ void __launch_bounds__(1024, 2) heavy(const float* __restrict__ x, float* y, int n) {
  float r[N];
#pragma unroll
  for (int i = 0; i < N; ++i) r[i] = x[(threadIdx.x + i * 977) % n];
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < N; ++i) acc += r[i] * r[(i * 7) % N];
#pragma unroll
  for (int i = 0; i < N; ++i) acc += r[N - 1 - i] * acc;
  y[threadIdx.x] = acc;
}
template __global__ void heavy<96>(const float*, float*, int);
__global__ void plain(float* x) { x[threadIdx.x] *= 2.f; }
"""


@pytest.mark.skipif(not (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")), reason="no nvcc")
def test_cuda_part_reports_spills_and_failures(tmp_path):
    cuda = tmp_path / "csrc" / "cuda"
    cuda.mkdir(parents=True)
    (cuda / "spill.cu").write_text(SPILLING_CU)
    (cuda / "broken.cu").write_text("__global__ void k( { }\n")
    out = tmp_path / "report.json"
    run = subprocess.run([sys.executable, SCRIPT, "--root", str(tmp_path), "--no-triton", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 2, run.stdout + run.stderr  # a failed compile outranks a spill
    rows = json.loads(out.read_text())["rows"]
    by = {(r["family"], r["kernel"].split("(")[0]): r for r in rows}
    assert not by[("broken", "csrc/cuda/broken.cu")]["ok"]
    heavy = next(r for (fam, k), r in by.items() if fam == "spill" and "heavy" in k)
    assert heavy["spill_stores"] > 0 and heavy["registers"] > 0
    plain = next(r for (fam, k), r in by.items() if fam == "spill" and "plain" in k)
    assert plain["spill_stores"] == 0
    assert "SPILLS" in run.stdout and "COMPILE FAILED" in run.stdout
