"""The benchmark harness: time providers side by side, relate the times to the machine's limits,
write CSV + markdown + PNG.

    from bench.common import Bench, providers

    bench = Bench("interaction", "cpu")                 # measures memory bandwidth once
    for c in bench.grid(op=["fm_interaction"], B=[4096], mode=["fwd", "fwd+bwd"]):
        x = torch.randn(c["B"], 39, 16, requires_grad=True)
        bench.run(op=c["op"], case=dict(B=c["B"], F=39, D=16), mode=c["mode"], inputs=(x,),
                  providers=providers(reference=ref_fn, op=rankops_fn, device="cpu"),
                  bytes=..., flops=None)
    bench.save()                                        # bench/results/interaction-<device tag>.{csv,md,png}

How a time is measured (the same for every provider of a case, interleaved so that a noisy
neighbour slows all of them alike):
  * every provider is warmed up first (torch.compile's compile time and Triton's JIT stay out);
  * "fwd" calls ``fn(*inputs)`` under torch.no_grad(); "fwd+bwd" calls ``fn(*inputs)`` and
    ``torch.autograd.grad(out, <inputs that require grad>, grad_out)`` with one fixed random
    grad_out shared by all providers, so nothing accumulates between calls; "step" calls
    ``fn(*inputs)`` with grad enabled and leaves the rest to it: a training step that updates its
    own weights (forward, backward and optimizer), whose result is not compared;
  * inputs (and grad_out) are cloned into several sets that together exceed the last-level cache
    (CPU L3 / GPU L2) and the calls rotate through them, so a small case is not timed from cache;
  * CPU: time.perf_counter around each call; GPU: CUDA events around each call;
  * samples are taken in short rounds (each round every provider in turn for about 20 ms) until
    each provider has ``min_time`` seconds and 10 calls of samples; the row holds the median, the
    20th/80th percentiles and the minimum.
A provider that raises (a torch.compile that fails on the machine, a backend without the op)
gets a row with the error instead of times; the run goes on.
"""

from __future__ import annotations

import datetime as _dt
import functools
import itertools
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("fwd", "fwd+bwd", "step")
BASELINES = ("eager", "compile")  # speedups are reported against these (a run may add more: Bench.baselines)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
ROUND_TIME = 0.02  # seconds each provider runs per round
MIN_SAMPLES = 10  # calls per provider and case, at least
MAX_CASE_TIME = 20  # x min_time: a case stops sampling then even if a slow provider has too few calls

# ---------------------------------------------------------------------------------------------
# providers


def providers(reference: Callable, op: Callable, device: str | torch.device, backends: Iterable[str] | None = None,
              compile: bool = True) -> dict[str, Callable]:
    """The standard providers of a case: ``eager`` (the reference under autograd), ``compile``
    (torch.compile of the reference, static shapes) and one per rankops backend that can serve
    ``device`` (cpp on CPU; cuda and triton on GPU; never the Triton interpreter).

    ``reference`` and ``op`` take the case's inputs positionally; bind any other argument with a
    lambda. Build the dict per case: the harness resets torch.compile's caches between cases.
    Add anchors (e.g. ``"fbgemm": fn``) to the returned dict.
    """
    from rankops import backend as _backend

    device = torch.device(device)
    out: dict[str, Callable] = {"eager": reference}
    if compile:
        out["compile"] = _compiled(reference)
    for b in backends if backends is not None else _backend.BACKENDS:
        if b == "reference" or _backend.why_unavailable(b, device) is not None:
            continue
        if b == "triton" and device.type != "cuda":
            continue  # the interpreter is for tests, not timings
        out[b] = _pinned(op, b)
    return out


def _compiled(reference: Callable) -> Callable:
    """torch.compile(reference, dynamic=False), made on the first call (importing the compiler
    costs seconds, wasted when --providers leaves compile out)."""
    compiled = []

    def fn(*args):
        if not compiled:
            compiled.append(torch.compile(reference, dynamic=False))
        return compiled[0](*args)

    return fn


def _pinned(op: Callable, backend: str) -> Callable:
    import rankops

    def fn(*args):
        with rankops.use_backend(backend):
            return op(*args)

    fn.__name__ = f"{getattr(op, '__name__', 'op')}[{backend}]"
    return fn


# ---------------------------------------------------------------------------------------------
# the machine


def device_tag(device: torch.device) -> str:
    """``cpu-AMD-EPYC``, ``NVIDIA-H200``: names the results files."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = "cpu-" + cpu_model()
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    name = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1]
                break
    except OSError:
        pass
    name = re.sub(r"\((R|TM|tm|r)\)|\bCPU\b|@.*$|\bProcessor\b|\d+-Core", " ", name)
    return " ".join(name.split()) or "unknown"


def _cache_bytes(device: torch.device) -> int:
    """Last-level cache size: GPU L2, CPU L3 (or the largest cache sysfs lists)."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20))
    best = 0
    for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            txt = (idx / "size").read_text().strip()
        except OSError:
            continue
        m = re.fullmatch(r"(\d+)([KMG]?)", txt)
        if m:
            best = max(best, int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)])
    return best or (32 << 20)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn: Callable, device: torch.device, reps: int) -> float:
    """Shortest of ``reps`` timed calls (seconds), after one warm-up call."""
    fn()
    _sync(device)
    return min(_Timer(device).chunk(lambda i: fn(), reps)) / 1e3


def measure_bandwidth(device: torch.device, nbytes: int | None = None) -> float:
    """Memory bandwidth in GB/s: a large tensor copy, (bytes read + bytes written) / time, best of
    several. CPU: a buffer 8x the L3 (at least 256 MB), copied by all of torch's threads."""
    if nbytes is None:
        nbytes = max(256 << 20, 8 * _cache_bytes(device)) if device.type == "cpu" else 1 << 30
    n = nbytes // 4
    # any non-zero data will do for a copy; filling is much cheaper than randn on a small CPU
    src = torch.rand(n, device=device) if device.type == "cuda" else torch.empty(n).fill_(1.25)
    dst = torch.empty_like(src)
    t = _best_time(lambda: dst.copy_(src), device, reps=10 if device.type == "cuda" else 5)
    return 2 * n * 4 / t / 1e9


def measure_peak(device: torch.device, n: int | None = None) -> tuple[float, str]:
    """(TFLOP/s, what was measured): a large matrix product on random data, best of several; bf16
    on GPU, fp32 on CPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = _best_time(lambda: a @ b, device, reps=10 if device.type == "cuda" else 5)
    return 2 * n**3 / t / 1e12, f"{DTYPE_NAMES[dtype]} matmul {n}x{n}x{n}"


# ---------------------------------------------------------------------------------------------
# timing


def _clone_sets(inputs: Sequence[Any], grad: Any, device: torch.device, max_sets: int = 32):
    """Copies of (inputs, grad) whose bytes together exceed 4x the last-level cache (at most
    ``max_sets`` copies): rotating through them keeps a small case from being timed from cache."""
    tensors = [t for t in list(inputs) + _as_list(grad) if isinstance(t, torch.Tensor)]
    per_set = max(1, sum(t.numel() * t.element_size() for t in tensors))
    k = max(1, min(max_sets, math.ceil(4 * _cache_bytes(device) / per_set)))

    def clone(t):
        if not isinstance(t, torch.Tensor):
            return t
        c = t.detach().clone()
        return c.requires_grad_(t.requires_grad) if c.is_floating_point() else c

    sets = [(list(inputs), grad)]
    for _ in range(k - 1):
        sets.append(([clone(t) for t in inputs], None if grad is None else _map(clone, grad)))
    return sets


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (tuple, list)) else [x]


def _map(f, x):
    return type(x)(f(t) for t in x) if isinstance(x, (tuple, list)) else f(x)


def _call(fn: Callable, inputs: Sequence[Any], mode: str, grad: Any):
    """One call of a provider in ``mode``; returns what was computed (outputs or input grads)."""
    if mode == "fwd":
        with torch.no_grad():
            return fn(*inputs)
    if mode == "step":
        with torch.enable_grad():
            fn(*inputs)
        return None
    out = fn(*inputs)
    wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    outs, grads = _as_list(out), _as_list(grad)
    return torch.autograd.grad(outs, wrt, grads)


def _rel_err(got, want) -> float:
    """max over outputs of ||got - want|| / ||want|| in fp64."""
    worst = 0.0
    for g, w in zip(_as_list(got), _as_list(want)):
        g, w = g.detach().double().cpu(), w.detach().double().cpu()
        if g.shape != w.shape:
            return math.inf
        den = w.norm().item() or 1.0
        worst = max(worst, (g - w).norm().item() / den)
    return worst


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class _Timer:
    """Times single calls: perf_counter on CPU, CUDA events on GPU (read after a synchronize)."""

    def __init__(self, device: torch.device):
        self.device = device

    def chunk(self, fn: Callable[[int], Any], n: int) -> list[float]:
        """Times ``fn(i)`` for i in range(n); returns milliseconds per call."""
        if self.device.type == "cuda":
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
            for i in range(n):
                ev[i][0].record()
                fn(i)
                ev[i][1].record()
            torch.cuda.synchronize(self.device)
            return [a.elapsed_time(b) for a, b in ev]
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            fn(i)
            out.append((time.perf_counter() - t0) * 1e3)
        return out


# ---------------------------------------------------------------------------------------------
# memory


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes live in torch's allocators while ``fn()`` runs, above what was live before it:
    inputs' gradients, saved activations and temporaries, not the inputs themselves. GPU: the
    caching allocator's statistics. CPU: the profiler's memory timeline (the CREATE / DESTROY of
    every storage; rankops' huge-page outputs report to it too). Memory a kernel takes past torch
    (a per-thread std::vector) is not seen."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action, MemoryProfile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    live = peak = 0
    for _t, action, _key, size in MemoryProfile(prof.profiler.kineto_results).timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


# ---------------------------------------------------------------------------------------------
# the harness


class Bench:
    """One benchmark run on one device: collects rows, writes ``<out_dir>/<name>-<device tag>.*``.

    Args:
        name: the run's name (the benchmark family, e.g. "interaction").
        device: "cpu" or "cuda" (or a torch.device).
        out_dir: where save() writes; default bench/results/.
        min_time: seconds of samples per provider and case (default 0.5 on CPU, 0.2 on GPU).
        cases: filters on the case, "key=v1,v2" strings (op=..., mode=..., dtype=..., B=4096, ...):
            a case runs when, for every key named, its value is one of those listed.
        providers: run only these providers (None: all that are given).
        quick / full: flags the family reads (quick: a small smoke subset; full: the whole grid
            even where it is slow).
        bandwidth / peak: the machine's limits (GB/s, TFLOP/s); measured when None.
        progress: show a tqdm bar in grid().
    """

    def __init__(self, name: str, device: str | torch.device = "cpu", *, out_dir: str | Path | None = None,
                 min_time: float | None = None, cases: Sequence[str] = (), providers: Sequence[str] | None = None,
                 quick: bool = False, full: bool = False, bandwidth: float | None = None,
                 peak: float | None = None, progress: bool = True):
        self.name = name
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.tag = device_tag(self.device)
        self.out_dir = Path(out_dir) if out_dir is not None else RESULTS
        self.min_time = min_time if min_time is not None else (0.2 if self.device.type == "cuda" else 0.5)
        self.case_filter = _parse_filters(cases)
        self.provider_filter = list(providers) if providers else None
        self.quick, self.full, self.progress = quick, full, progress
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.command = " ".join(["python -m bench"] + sys.argv[1:]) if _invoked_as_cli() else None
        self.started = _dt.datetime.now().astimezone()
        self.load = [_loadavg()]
        self.bandwidth = bandwidth if bandwidth is not None else measure_bandwidth(self.device)
        # providers the speedup columns divide by; a family adds its anchors (e.g. "fbgemm")
        self.baselines: tuple[str, ...] = BASELINES
        # providers that are bounds, not implementations (e.g. a gather floor): their result is not
        # compared, and the report relates the others' times to the fastest of them
        self.limits: tuple[str, ...] = ()
        self._peak = (peak, "given") if peak is not None else None

    # -- limits

    @property
    def peak(self) -> float:
        """Peak TFLOP/s (measured on first use: only runs that report flops pay for it)."""
        if self._peak is None:
            self._peak = measure_peak(self.device)
        return self._peak[0]

    # -- cases

    def note(self, text: str) -> None:
        """A line for the markdown header (e.g. which part of the grid this device runs)."""
        self.notes.append(text)

    def wants(self, **case) -> bool:
        """Whether the --cases filters let this case through (keys they do not name pass)."""
        for key, allowed in self.case_filter.items():
            if key in case and _fmt(case[key]) not in allowed:
                return False
        return True

    def grid(self, **axes: Iterable) -> Iterator[dict]:
        """The cartesian product of the axes, as dicts, filtered by --cases, with a progress bar."""
        keys = list(axes)
        combos = [dict(zip(keys, vals)) for vals in itertools.product(*(list(axes[k]) for k in keys))]
        combos = [c for c in combos if self.wants(**c)]
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(combos, desc=f"{self.name} [{self.tag}]", unit="case", dynamic_ncols=True)
            for c in bar:
                bar.set_postfix_str(" ".join(f"{k}={_fmt(v)}" for k, v in c.items()), refresh=False)
                yield dict(c)
        else:
            for c in combos:
                yield dict(c)

    # -- measuring

    def run(self, *, op: str, case: dict, providers: dict[str, Callable], inputs: Sequence[Any],
            mode: str = "fwd", dtype: torch.dtype | None = None, bytes: float | None = None,
            flops: float | None = None, grad: Any = None, memory: bool = False) -> list[dict]:
        """Time every provider on one case; append and return one row per provider.

        Args:
            op: the op's name (rows are grouped by it).
            case: the case's parameters, e.g. dict(B=4096, F=39, D=16) (columns of the CSV).
            providers: {name: fn}; ``fn(*inputs)`` returns the output (a tensor or a tuple).
                "eager" and "compile" are the baselines of the speedup columns.
            inputs: the arguments; in "fwd+bwd" the tensors with requires_grad are differentiated.
            mode: "fwd", "fwd+bwd" or "step" (see the module docstring).
            dtype: the dtype label; default the first floating input's.
            bytes: bytes the mode must move (each input read once, each output written once)
                -> GB/s and the fraction of the measured bandwidth.
            flops: floating-point operations of the mode -> TFLOP/s and the fraction of the peak.
            grad: grad_out for "fwd+bwd"; default a fixed random tensor shaped like the output.
            memory: also measure each provider's peak memory over one more call (``peak_MiB``,
                see peak_memory), after the timings.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if dtype is None:
            dtype = next((t.dtype for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()), None)
        dname = DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))
        if not self.wants(op=op, mode=mode, dtype=dname, **case):
            return []
        names = [p for p in providers if self.provider_filter is None or p in self.provider_filter]
        if not names:
            return []
        if "torch._dynamo" in sys.modules:  # (imported by torch.compile; importing it costs seconds)
            torch._dynamo.reset()  # a fresh compile per case: no recompile limit, no dynamic-shape fallback

        base = dict(run=self.name, device=self.tag, op=op, case=_case_str(case), **case, provider=None,
                    mode=mode, dtype=dname)
        errors: dict[str, str] = {}
        fns = {p: providers[p] for p in names}
        if mode == "fwd+bwd" and grad is None:
            grad = self._grad_for(fns, inputs, errors)
        sets = _clone_sets(inputs, grad, self.device)
        timer = _Timer(self.device)

        # warm-up (compiles, JIT, allocator), a reference result, a per-call estimate
        ref_name = next((p for p in ("eager", *names) if p in fns and p not in self.limits), None)
        results: dict[str, Any] = {}
        est: dict[str, float] = {}
        for p, fn in fns.items():
            if p in errors:
                continue
            try:
                results[p] = _call(fn, sets[0][0], mode, sets[0][1])
                _sync(self.device)
                t0, calls = time.perf_counter(), 0
                while calls < 3 or (time.perf_counter() - t0 < 0.05 and calls < 100):
                    s = sets[calls % len(sets)]
                    _call(fn, s[0], mode, s[1])
                    calls += 1
                _sync(self.device)
                est[p] = (time.perf_counter() - t0) / calls
            except Exception as e:  # noqa: BLE001 - a failing provider is a result, not a crash
                errors[p] = _describe(e)
                results.pop(p, None)

        # short rounds, every provider in turn, so that bursts of machine noise hit them alike; until
        # each has min_time of samples and MIN_SAMPLES calls (or the case has taken MAX_CASE_TIME x min_time)
        samples: dict[str, list[float]] = {p: [] for p in est}
        t_end = time.perf_counter() + MAX_CASE_TIME * self.min_time
        while samples and time.perf_counter() < t_end and not all(
                len(v) >= MIN_SAMPLES and sum(v) >= 1e3 * self.min_time for v in samples.values()):
            for p in list(samples):
                fn = fns[p]
                n = int(min(5_000, max(1, ROUND_TIME / max(est[p], 1e-7))))
                start = len(samples[p])

                def one(i, fn=fn, start=start):
                    s = sets[(start + i) % len(sets)]
                    _call(fn, s[0], mode, s[1])

                try:
                    samples[p] += timer.chunk(one, n)
                except Exception as e:  # noqa: BLE001
                    errors[p] = _describe(e)
                    del samples[p]

        peaks = {}
        for p in samples if memory else ():
            try:
                peaks[p] = peak_memory(lambda fn=fns[p]: _call(fn, sets[0][0], mode, sets[0][1]), self.device)
            except Exception as e:  # noqa: BLE001
                errors[p] = _describe(e)

        rows = []
        ref = results.get(ref_name)
        for p in names:
            row = dict(base, provider=p)
            if p in self.limits:
                row["limit"] = 1  # (in the csv too, so that a redraw knows)
            if p in samples and samples[p]:
                med = _quantile(samples[p], 0.5)
                row.update(median_ms=med, p20_ms=_quantile(samples[p], 0.2), p80_ms=_quantile(samples[p], 0.8),
                           min_ms=min(samples[p]), samples=len(samples[p]))
                if bytes and p not in self.limits:  # (a limit need not move the op's bytes)
                    row.update(bytes=bytes, gbps=bytes / med / 1e6, bw_frac=bytes / med / 1e6 / self.bandwidth)
                if flops:
                    row.update(flops=flops, tflops=flops / med / 1e9, flops_frac=flops / med / 1e9 / self.peak)
                if p in peaks:
                    row["peak_MiB"] = peaks[p] / 2**20
                if ref is not None and p in results and p not in self.limits:
                    row["rel_err"] = 0.0 if p == ref_name else _rel_err(results[p], ref)
            else:
                row["error"] = errors.get(p, "no samples")
            rows.append(row)
        _speedups(rows, self.baselines)
        self.rows += rows
        return rows

    def _grad_for(self, fns, inputs, errors) -> Any:
        """A fixed random grad_out (seeded) shaped like the first working provider's output."""
        for p, fn in fns.items():
            try:
                with torch.no_grad():
                    out = fn(*inputs)
                break
            except Exception as e:  # noqa: BLE001
                errors[p] = _describe(e)
        else:
            return None
        gen = torch.Generator(device="cpu").manual_seed(0)

        def rand(t):
            return torch.randn(t.shape, generator=gen, dtype=torch.float32).to(device=t.device, dtype=t.dtype)

        return _map(rand, out) if isinstance(out, (tuple, list)) else rand(out)

    # -- output

    def save(self) -> dict[str, Path]:
        """Write <out_dir>/<name>-<tag>.csv, .md and .png; returns their paths."""
        from bench import report

        self.out_dir.mkdir(parents=True, exist_ok=True)
        stem = self.out_dir / f"{self.name}-{self.tag}"
        paths = {"csv": stem.with_suffix(".csv"), "md": stem.with_suffix(".md"), "png": stem.with_suffix(".png")}
        report.write_csv(self, paths["csv"])
        report.write_md(self, paths["md"])
        report.write_png(self, paths["png"])
        return paths

    def header(self) -> list[tuple[str, str]]:
        """(what, value) lines describing the machine and the run."""
        lines = []
        if self.device.type == "cuda":
            p = torch.cuda.get_device_properties(self.device)
            lines.append(("device", f"{p.name} ({p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB), "
                                    f"host CPU {cpu_model()}"))
        else:
            lines.append(("device", f"CPU {cpu_model()}, {os.cpu_count()} logical cores, torch threads "
                                    f"{torch.get_num_threads()}, last-level cache {_cache_bytes(self.device) >> 20} MiB"))
        versions = f"torch {torch.__version__}"
        try:
            import triton

            versions += f", triton {triton.__version__}"
        except ImportError:
            versions += ", triton not installed"
        versions += f", python {platform.python_version()}"
        lines.append(("versions", versions))
        lines.append(("rankops", _rankops_build()))
        lines.append(("date", self.started.strftime("%Y-%m-%d %H:%M %Z")))
        if self.device.type == "cpu" and self.load[0] is not None:
            end = _loadavg()
            lines.append(("load average", f"{self.load[0]:.2f} at the start, {end:.2f} at the end "
                                          f"(1-minute; above {os.cpu_count()} means other work shared the cores)"))
        if self.command:
            lines.append(("command", f"`{self.command}`"))
        from rankops.cpu_memory import freed_memory_kept

        if self.device.type == "cpu" and freed_memory_kept():
            lines.append(("malloc", "freed blocks kept for reuse (rankops.keep_freed_memory), every provider alike"))
        lines.append(("memory bandwidth", f"{self.bandwidth:.1f} GB/s measured (tensor copy, bytes read + written)"))
        if self._peak is not None:
            lines.append(("peak", f"{self._peak[0]:.2f} TFLOP/s measured ({self._peak[1]})"))
        return lines


# ---------------------------------------------------------------------------------------------
# small helpers


def _describe(e: BaseException) -> str:
    """The exception's type and first line, short enough for a table cell."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _fmt(v) -> str:
    return DTYPE_NAMES.get(v, str(v)) if isinstance(v, torch.dtype) else str(v)


def _case_str(case: dict) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in case.items())


def _parse_filters(terms: Sequence[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for term in terms:
        for part in term.split():
            key, sep, vals = part.partition("=")
            if not sep or not key or not vals:
                raise ValueError(f"--cases takes key=value[,value...] terms, got {part!r}")
            out.setdefault(key, set()).update(vals.split(","))
    return out


def _speedups(rows: list[dict], baselines: Sequence[str] = BASELINES) -> None:
    med = {r["provider"]: r.get("median_ms") for r in rows}
    for r in rows:
        for b in baselines:
            if r.get("median_ms") and med.get(b):
                r[f"vs_{b}"] = med[b] / r["median_ms"]


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _invoked_as_cli() -> bool:
    main = sys.modules.get("__main__")
    return bool(main and getattr(main, "__spec__", None) and main.__spec__.name == "bench.__main__")


def _rankops_build() -> str:
    try:
        import rankops
        from rankops import backend as _backend

        ext, why = _backend._extension()
        build = (f"rankops._C built (CUDA={ext.with_cuda}, archs={ext.cuda_archs or '-'})" if ext is not None
                 else f"rankops._C missing: {why}")
        text = f"rankops {rankops.__version__}; {build}"
    except Exception as e:  # noqa: BLE001
        text = f"rankops not importable: {e}"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "rankops", "csrc"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if sha:
            text += f"; git {sha}" + (" (+ local changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return text
