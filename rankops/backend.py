"""Which implementation serves a call.

Backends:
  reference  pure PyTorch, any device; the ground truth.
  cpp        CPU kernels from the compiled extension ``rankops._C`` (csrc/cpu).
  cuda       CUDA kernels from ``rankops._C`` (csrc/cuda); needs a CUDA build of the extension.
  triton     Triton kernels; on a GPU, or on CPU tensors when TRITON_INTERPRET=1 (tests only).
  auto       the default: for each op and device, the first available backend in AUTO_ORDER.

The choice is process-wide (``RANKOPS_BACKEND``) or scoped (``with rankops.use_backend("cpp"):``);
scoping is thread-local so a server thread can pin a backend without affecting the others.
The selection happens at call time inside the custom op, so it works under torch.compile too.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import threading
from typing import Iterator

import torch

BACKENDS = ("reference", "cpp", "cuda", "triton")
CHOICES = BACKENDS + ("auto",)

# auto's preference per device type. Measured in bench/ (see bench/results/); on CPU the cpp
# kernels beat eager and torch.compile. On CUDA the hand-written kernels come first; the H200
# numbers that would confirm the order per op are listed in bench/results/README.md.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("cpp", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}
# Per-op overrides of AUTO_ORDER: (op, device type) -> order, from the measured table below.
AUTO_ORDER_BY_OP: dict[tuple[str, str], tuple[str, ...]] = {}

# The table auto reads per op (rankops/auto_order.json, package data): which backend each op tries
# first on a device type, and the GPU run that measured it. Ops whose CUDA kernels no GPU has
# measured yet are listed with Triton first and "measured_on": null. `python -m bench.auto_order`
# writes it from a GPU run's benchmark csvs (scripts/gpu_suite.sh does, into its archives).
AUTO_ORDER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "auto_order.json")


def _read_table(path: str) -> dict:
    import json

    with open(path) as f:
        return json.load(f)


def load_auto_order(path: str = AUTO_ORDER_FILE) -> dict[tuple[str, str], tuple[str, ...]]:
    """{(op, device type): order} from a table file; the order always ends in reference."""
    orders = {}
    for dev, ops in _read_table(path).items():
        if dev.startswith("_"):  # "_doc"
            continue
        for op, entry in ops.items():
            order = tuple(entry["order"])
            unknown = [b for b in order if b not in BACKENDS]
            if unknown:
                raise ValueError(f"{path}: {dev} {op}: unknown backends {unknown} (known: {BACKENDS})")
            orders[(op, dev)] = order + (() if "reference" in order else ("reference",))
    return orders


def measured_on(op: str, device: str = "cuda", path: str = AUTO_ORDER_FILE) -> str | None:
    """The GPU whose benchmarks set ``op``'s order on ``device`` (None: unmeasured, or not in the table)."""
    return _read_table(path).get(device, {}).get(op, {}).get("measured_on")


AUTO_ORDER_BY_OP.update(load_auto_order())

_state = threading.local()


def _validate(name: str) -> str:
    if name not in CHOICES:
        raise ValueError(f"unknown rankops backend {name!r}; choose one of {CHOICES}")
    return name


def _default() -> str:
    return _validate(os.environ.get("RANKOPS_BACKEND", "auto").strip().lower() or "auto")


def current() -> str:
    """The backend asked for in this thread: the innermost use_backend, else RANKOPS_BACKEND, else auto."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else _default()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Serve rankops calls in this block (this thread) with backend ``name``."""
    _validate(name)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


# ---------------------------------------------------------------------------------------------
# availability


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _extension():
    """(module or None, reason it is missing)."""
    try:
        return importlib.import_module("rankops._C"), ""
    except ImportError as e:  # not built, or built against another torch
        if importlib.util.find_spec("rankops._C") is None:
            return None, ("rankops._C is not part of this install (a pure-Python install: no C++ compiler or "
                          "CMake at install time, or RANKOPS_BUILD_NATIVE=0); install a compiler and reinstall")
        return None, f"rankops._C could not be imported ({e}); build it with `pip install -e .`"


def installed_backends() -> tuple[str, ...]:
    """The backends this install has, whatever the device: reference always, cpp (and cuda) with the
    native extension, triton with the triton package."""
    ext = extension()
    have = ["reference"]
    if ext is not None:
        have += ["cpp"] + (["cuda"] if ext.with_cuda else [])
    if _triton()[0]:
        have.append("triton")
    return tuple(have)


def extension():
    return _extension()[0]


@functools.lru_cache(maxsize=None)
def _triton():
    try:
        import triton  # noqa: F401

        return True, ""
    except ImportError as e:
        return False, f"triton is not installed ({e})"


def why_unavailable(backend: str, device: torch.device | str) -> str | None:
    """None when ``backend`` can serve tensors on ``device``; otherwise the reason why not."""
    dev = torch.device(device).type
    if backend == "reference":
        return None
    if backend == "cpp":
        if dev != "cpu":
            return f"the cpp backend serves CPU tensors, not {dev}"
        return _extension()[1] or None
    if backend == "cuda":
        if dev != "cuda":
            return f"the cuda backend serves CUDA tensors, not {dev}"
        ext, why = _extension()
        if ext is None:
            return why
        if not ext.with_cuda:
            return "rankops._C was built without CUDA kernels (no nvcc or a CPU-only torch at build time)"
        return None
    if backend == "triton":
        ok, why = _triton()
        if not ok:
            return why
        if dev == "cuda":
            return None
        if dev == "cpu" and triton_interpreting():
            return None
        return f"the triton backend serves CUDA tensors (CPU tensors only when TRITON_INTERPRET=1), not {dev}"
    raise ValueError(f"unknown rankops backend {backend!r}")


def select(op: str, device: torch.device, implemented: tuple[str, ...]) -> str:
    """The backend that serves ``op`` on ``device``; ``implemented`` lists the backends the op has.

    An explicitly chosen backend that cannot serve the call raises ValueError saying why, rather
    than silently running something else: a user who pins a backend wants to know.
    """
    want = current()
    if want != "auto":
        if want not in implemented:
            raise ValueError(f"rankops.{op} has no {want!r} backend (it has {implemented})")
        why = why_unavailable(want, device)
        if why:
            raise ValueError(f"rankops.{op}: backend {want!r} cannot serve this call: {why}")
        return want
    order = AUTO_ORDER_BY_OP.get((op, device.type)) or AUTO_ORDER.get(device.type, ("reference",))
    for name in order:
        if name in implemented and why_unavailable(name, device) is None:
            return name
    return "reference"


def info(file=None) -> str:
    """Print (and return) versions, devices, and which backend is available and why not."""
    import platform

    import rankops

    lines = [
        f"rankops {rankops.__version__}",
        f"python {platform.python_version()}  torch {torch.__version__}  (CUDA {torch.version.cuda})",
    ]
    ok, why = _triton()
    if ok:
        import triton

        lines.append(f"triton {triton.__version__}" + ("  [TRITON_INTERPRET=1]" if triton_interpreting() else ""))
    else:
        lines.append(f"triton: {why}")
    ext, why = _extension()
    if ext is not None:
        lines.append(f"rankops._C: built with CUDA={ext.with_cuda} archs={ext.cuda_archs or '-'} torch={ext.torch_version}")
    else:
        lines.append(f"rankops._C: {why}")
    lines.append("installed backends: " + ", ".join(installed_backends())
                 + ("" if ext is not None else "  (pure Python: no cpp / cuda kernels)"))
    cuda_table = _read_table(AUTO_ORDER_FILE).get("cuda", {})
    unmeasured = sorted(op for op, entry in cuda_table.items() if entry.get("measured_on") is None)
    if unmeasured:
        lines.append("auto on cuda, unmeasured (Triton first until a GPU run measures CUDA vs Triton): "
                     + ", ".join(unmeasured))
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        lines.append("GPUs: " + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
    else:
        lines.append("GPUs: none visible to torch")
    lines.append(f"backend asked for: {current()}  (RANKOPS_BACKEND={os.environ.get('RANKOPS_BACKEND', '')!r})")
    for dev in dict.fromkeys(d.split(":")[0] for d in devices):
        for b in BACKENDS:
            why = why_unavailable(b, dev)
            lines.append(f"  {dev:5s} {b:10s} " + ("available" if why is None else f"unavailable: {why}"))
    text = "\n".join(lines)
    print(text, file=file)
    return text
