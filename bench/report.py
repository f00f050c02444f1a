"""Writers for a Bench's rows: CSV (every number), markdown (readable tables), PNG (the picture).
Called by Bench.save(); nothing here measures anything.

    python -m bench.report bench/results/<run>.csv [...]   # redraw the md and png from a csv
"""

from __future__ import annotations

import csv
import math
import sys
import types
from collections import defaultdict
from pathlib import Path

from bench.common import BASELINES

FIXED_HEAD = ["run", "device", "op", "case"]
FIXED_TAIL = ["provider", "mode", "dtype", "median_ms", "p20_ms", "p80_ms", "min_ms", "samples", "bytes", "gbps", "bw_frac",
              "flops", "tflops", "flops_frac", "vs_eager", "vs_compile", "rel_err", "peak_MiB", "limit", "error"]


def _vs_columns(rows: list[dict]) -> list[str]:
    """vs_<baseline> columns beyond eager and compile (a run's own anchors, e.g. vs_fbgemm)."""
    return list(dict.fromkeys(k for r in rows for k in r if k.startswith("vs_") and k not in FIXED_TAIL))


def columns(rows: list[dict]) -> list[str]:
    """CSV columns: the fixed ones around the union of the case parameters (in first-seen order)."""
    extra = _vs_columns(rows)
    known = set(FIXED_HEAD) | set(FIXED_TAIL) | set(extra)
    params: dict[str, None] = {}
    for r in rows:
        for k in r:
            if k not in known:
                params[k] = None
    cut = FIXED_TAIL.index("vs_compile") + 1
    return FIXED_HEAD + list(params) + FIXED_TAIL[:cut] + extra + FIXED_TAIL[cut:]


def _num(v, digits=4):
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


def write_csv(bench, path: Path) -> None:
    cols = columns(bench.rows)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in bench.rows:
            # floats in full (shortest round-trip): a redraw must round them as the run did
            w.writerow({k: repr(v) if isinstance(v := r.get(k), float) and math.isfinite(v) else _num(v) for k in cols})


def _groups(rows):
    """{(op, mode, dtype): {case: {provider: row}}}, in first-seen order."""
    out: dict = {}
    for r in rows:
        out.setdefault((r["op"], r["mode"], r["dtype"]), {}).setdefault(r["case"], {})[r["provider"]] = r
    return out


def _providers(rows, baselines=BASELINES) -> list[str]:
    seen = dict.fromkeys(r["provider"] for r in rows)
    return [p for p in baselines if p in seen] + [p for p in seen if p not in baselines]


def _x(v):
    return f"{v:.2f}x" if v else "-"


def _pct(v):
    return f"{100 * v:.0f}%" if v is not None and v != "" else "-"


def write_md(bench, path: Path) -> None:
    rows = bench.rows
    baselines = getattr(bench, "baselines", BASELINES)
    limits = getattr(bench, "limits", ())
    provs = [p for p in _providers(rows, baselines) if p not in limits]
    anchors = [b for b in baselines if b not in ("eager", "compile")]
    lines = [f"# {bench.name} on {bench.tag}", ""]
    for what, value in bench.header():
        lines.append(f"- **{what}**: {value}")
    for n in bench.notes:
        lines.append(f"- {n}")
    lines += [
        "",
        "Times are medians of single calls (p20-p80 in the details), providers interleaved in rounds; "
        "`fwd` runs under torch.no_grad, `fwd+bwd` is the forward plus torch.autograd.grad with one fixed "
        "random grad_out, `step` a whole training step (forward, backward, optimizer update). "
        "`vs eager` / `vs compile` = that provider's time divided into the baseline's "
        "(> 1 is faster). GB/s = bytes the op must move (formula in the benchmark) / median time; "
        "% bw = that over the measured memory bandwidth.",
        "",
    ]
    others = [p for p in provs if p != "eager"]
    for (op, mode, dtype), cases in _groups(rows).items():
        present = [p for p in provs if any(p in c for c in cases.values())]
        lines += [f"## {op} - {mode} - {dtype}", ""]
        head = ["case"] + [f"{p} ms" for p in present]
        for p in others:
            if p not in present:
                continue
            head.append(f"{p} vs eager")
            if p != "compile" and "compile" in present:
                head.append(f"{p} vs compile")
            if p not in baselines:
                head += [f"{p} vs {a}" for a in anchors if a in present]
        mem = [p for p in present if any(c.get(p, {}).get("peak_MiB") is not None for c in cases.values())]
        head += [f"{p} peak MiB" for p in mem]
        head.append("best % bw")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for case, byp in cases.items():
            cells = [case]
            for p in present:
                r = byp.get(p)
                cells.append("-" if r is None else ("error" if r.get("error") else _num(r.get("median_ms"), 3)))
            for p in others:
                if p not in present:
                    continue
                r = byp.get(p, {})
                cells.append(_x(r.get("vs_eager")))
                if p != "compile" and "compile" in present:
                    cells.append(_x(r.get("vs_compile")))
                if p not in baselines:
                    cells += [_x(r.get(f"vs_{a}")) for a in anchors if a in present]
            cells += [_num(byp.get(p, {}).get("peak_MiB"), 4) or "-" for p in mem]
            fr = [r.get("bw_frac") for p, r in byp.items() if r.get("bw_frac") and p not in limits]
            cells.append(_pct(max(fr)) if fr else "-")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += _limits_table(op, mode, dtype, cases, present, limits)

    lines += ["## Details", "",
              "| op | mode | dtype | case | provider | median ms | p20-p80 ms | min ms | GB/s | % bw | TFLOP/s | % peak "
              "| vs eager | vs compile | rel err |",
              "|" + "---|" * 15]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['op']} | {r['mode']} | {r['dtype']} | {r['case']} | {r['provider']} | "
                         f"error: {r['error'].replace('|', '/')} |" + " |" * 9)
            continue
        lines.append("| " + " | ".join([
            r["op"], r["mode"], r["dtype"], r["case"], r["provider"], _num(r.get("median_ms"), 3),
            f"{_num(r.get('p20_ms'), 3)}-{_num(r.get('p80_ms'), 3)}", _num(r.get("min_ms"), 3), _num(r.get("gbps"), 3), _pct(r.get("bw_frac")),
            _num(r.get("tflops"), 3), _pct(r.get("flops_frac")), _x(r.get("vs_eager")), _x(r.get("vs_compile")),
            _num(r.get("rel_err"), 2)]) + " |")
    errs = sorted({r["error"] for r in rows if r.get("error")})
    if errs:
        lines += ["", "Errors:", ""] + [f"- `{e}`" for e in errs]
    path.write_text("\n".join(lines) + "\n")


def _floor(byp: dict, limits) -> float | None:
    """The fastest limit's median time in one case (None when the case has none)."""
    ts = [byp[q]["median_ms"] for q in limits if byp.get(q, {}).get("median_ms")]
    return min(ts) if ts else None


def _limits_table(op, mode, dtype, cases, present, limits) -> list[str]:
    """Each provider's time as a multiple of the fastest limit's: how much speedup is left."""
    have = [q for q in limits if any(c.get(q, {}).get("median_ms") for c in cases.values())]
    if not have:
        return []
    head = ["case"] + [f"{q} ms" for q in have] + [f"{p} / floor" for p in present]
    lines = [f"### {op} - {mode} - {dtype}: times over the floor ({' or '.join(have)}, the faster)", "",
             "A provider's time divided by the floor's: 1.00x is as fast as reading the data allows; a "
             "baseline at k x leaves at most k x of speedup over it.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case, byp in cases.items():
        fl = _floor(byp, have)
        cells = [case] + [_num(byp.get(q, {}).get("median_ms"), 3) or "-" for q in have]
        cells += [_x(byp[p]["median_ms"] / fl) if fl and byp.get(p, {}).get("median_ms") else "-" for p in present]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def write_png(bench, path: Path) -> None:
    """One panel per (op, mode, dtype): speedup over eager of every provider, per case (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    groups = _groups(bench.rows)
    limits = getattr(bench, "limits", ())
    provs = [p for p in _providers(bench.rows) if p != "eager" and p not in limits]
    n = max(1, len(groups))
    ncase = max((len(c) for c in groups.values()), default=1)
    ncol = 2 if n > 1 and ncase <= 8 else 1  # wide grids get a row each
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(max(7, 0.9 * ncase + 2) * ncol, 3.8 * nrow), squeeze=False)
    colors = dict(zip(provs, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4))
    width = 0.8 / max(1, len(provs))
    for ax, ((op, mode, dtype), cases) in zip(axes.flat, groups.items()):
        labels = list(cases)
        lo, hi = 1.0, 1.0
        for k, p in enumerate(provs):
            xs, ys = [], []
            for i, c in enumerate(labels):
                v = cases[c].get(p, {}).get("vs_eager")
                if v:
                    xs.append(i + (k - (len(provs) - 1) / 2) * width)
                    ys.append(v)
            if not xs:
                continue
            # bars grow from 1x: up when faster than eager, down when slower
            ax.bar(xs, [y - 1 for y in ys], width, bottom=1, label=p, color=colors[p])
            for x, y in zip(xs, ys):
                ax.annotate(f"{y:.3g}", (x, y), ha="center", va="bottom" if y >= 1 else "top", fontsize=7)
            lo, hi = min(lo, *ys), max(hi, *ys)
        # the floor's speedup over eager: the most any provider could reach
        fl = [(i, cases[c]["eager"]["median_ms"] / f) for i, c in enumerate(labels)
              if (f := _floor(cases[c], limits)) and cases[c].get("eager", {}).get("median_ms")]
        if fl:
            ax.scatter([i for i, _ in fl], [y for _, y in fl], marker="_", s=900, color="black", zorder=3,
                       label="floor (" + " or ".join(q for q in limits) + ")")
            hi = max(hi, *(y for _, y in fl))
        ax.axhline(1.0, color="black", lw=1, ls="--")
        ax.set_yscale("log")
        ax.set_ylim(min(lo, 1 / 1.5) / 1.3, max(hi, 1.5) * 1.3)
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xticks(range(len(labels)))
        same = set.intersection(*(set(c.split()) for c in labels)) if len(labels) > 1 else set()
        ax.set_xticklabels(["\n".join(t for t in c.split() if t not in same) for c in labels], fontsize=7)
        ax.set_ylabel("speedup over eager")
        ax.set_title(f"{op}  {mode}  {dtype}" + (f"  ({' '.join(sorted(same))})" if same else ""), fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle(f"{bench.name} on {bench.tag}  (median time of eager / provider; dashed = eager; "
                 f"bandwidth {bench.bandwidth:.0f} GB/s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# redraw


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


_TEXT = {"run", "device", "op", "case", "provider", "mode", "dtype", "error"}


def redraw(csv_path: str | Path) -> None:
    """Rewrite a run's markdown and plot from its csv (after a change to this file), keeping the
    header lines of the markdown beside it: the machine, the command, the load."""
    csv_path = Path(csv_path)
    with open(csv_path, newline="") as f:
        rows = [{k: (v if k in _TEXT else _value(v)) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    md_path = csv_path.with_suffix(".md")
    head = []
    for line in md_path.read_text().splitlines()[2:]:
        if not line.startswith("- "):
            break
        head.append(line[2:])
    header = [tuple(h[2:].split("**: ", 1)) for h in head if h.startswith("**") and "**: " in h]
    bw = next((float(v.split()[0]) for k, v in header if k == "memory bandwidth"), float("nan"))
    name, tag = rows[0]["run"], rows[0]["device"]
    bench = types.SimpleNamespace(
        name=name, tag=tag, rows=rows, bandwidth=bw, header=lambda: header,
        notes=[h for h in head if not (h.startswith("**") and "**: " in h)],
        baselines=BASELINES + tuple(k[3:] for k in _vs_columns(rows)),
        limits=tuple(dict.fromkeys(r["provider"] for r in rows if r.get("limit"))))
    write_md(bench, md_path)
    write_png(bench, csv_path.with_suffix(".png"))


if __name__ == "__main__":
    for p in sys.argv[1:]:
        redraw(p)
        print(f"redrew {Path(p).with_suffix('.md')} and .png")
