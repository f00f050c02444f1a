"""What a training run leaves beside its checkpoints: ``metrics.json``, the final report table and a
PNG of the training curves (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

METRIC_ORDER = ("auc", "gauc", "logloss", "calibration", "mse")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync, rename (never a half-written file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(_clean(obj), indent=1, default=str) + "\n")


def metrics_table(metrics: dict, tasks, title: str = "") -> str:
    """``{"<task>/<metric>": value}`` as a text table, one row per task."""
    cols = [m for m in METRIC_ORDER if any(f"{t.name}/{m}" in metrics for t in tasks)]
    rows = [["task"] + cols]
    for t in tasks:
        rows.append([t.name] + [_fmt(metrics.get(f"{t.name}/{m}")) for m in cols])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = [title] if title else []
    out += [line(rows[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in rows[1:]]
    return "\n".join(out)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.4f}"


def plot_curves(path: str | Path, history: list[dict], curve: list, tasks, title: str = "") -> Path | None:
    """Training loss (per ``curve_every`` steps and per epoch) and each task's validation AUC /
    logloss per epoch; written atomically. None when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path = Path(path)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    if curve:
        ax.plot([c[0] for c in curve], [c[1] for c in curve], lw=1, label="train loss")
    if history:
        ax.plot([h["step"] for h in history], [h["train_loss"] for h in history], "o-", label="epoch mean")
    ax.set_xlabel("step")
    ax.set_title("training loss")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    kinds = {t.kind for t in tasks}
    panels = (("validation auc", {"binary": "auc"}),
              ("validation " + " / ".join(m for k, m in (("binary", "logloss"), ("regression", "mse")) if k in kinds),
               {"binary": "logloss", "regression": "mse"}))
    for ax, (panel_title, metric) in zip(axes[1:], panels):
        for t in tasks:
            if t.kind not in metric:
                continue
            key = f"valid/{t.name}/{metric[t.kind]}"
            pts = [(h["epoch"], h[key]) for h in history if key in h and h[key] is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{t.name} ({metric[t.kind]})")
        ax.set_xlabel("epoch")
        ax.set_title(panel_title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
