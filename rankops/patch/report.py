"""PatchReport: what rankops.patch() did to each layer it looked at, printable as a table."""

from __future__ import annotations

from dataclasses import dataclass, field

STATUSES = ("patched", "left", "excluded", "not covered")


@dataclass(frozen=True)
class Entry:
    """One layer: its path in the model (``""`` is the model itself), its class, what happened.

    status:
      * ``patched``      computes with rankops ops now (``detail`` says with which)
      * ``left``         recognised, but a configuration rankops does not reproduce exactly (``detail``
                         says which); the layer is untouched
      * ``excluded``     recognised, skipped by ``include`` / ``exclude``
      * ``not covered``  a layer of DeepCTR-Torch, TorchRec or torch-rechub that rankops has no kernel
                         for; untouched
    """

    path: str
    cls: str
    status: str
    detail: str = ""


@dataclass
class PatchReport:
    """The outcome of ``rankops.patch(model)``: one Entry per layer looked at, in module order.

    ``str(report)`` (and ``print(report)``) is a table; ``report.patched`` / ``report.left`` list the
    entries of one status; ``len(report.patched)`` counts the layers that now run on rankops.
    """

    entries: list[Entry] = field(default_factory=list)
    backend: str | None = None

    def add(self, path: str, cls: str, status: str, detail: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"PatchReport: status must be one of {STATUSES}, got {status!r}")
        self.entries.append(Entry(path, cls, status, detail))

    def _of(self, status: str) -> list[Entry]:
        return [e for e in self.entries if e.status == status]

    @property
    def patched(self) -> list[Entry]:
        return self._of("patched")

    @property
    def left(self) -> list[Entry]:
        return self._of("left")

    @property
    def excluded(self) -> list[Entry]:
        return self._of("excluded")

    @property
    def not_covered(self) -> list[Entry]:
        return self._of("not covered")

    def by_path(self) -> dict[str, Entry]:
        """{path: entry}; a path with two entries (a model and its embedding tables) keeps the first."""
        out: dict[str, Entry] = {}
        for e in self.entries:
            out.setdefault(e.path, e)
        return out

    def table(self) -> str:
        head = ("layer", "class", "status", "how / why")
        rows = [(e.path or "(model)", e.cls, e.status, e.detail) for e in self.entries]
        widths = [max([len(head[i])] + [len(r[i]) for r in rows]) for i in range(3)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head[:3], widths)) + "  " + head[3]]
        lines.append("  ".join("-" * w for w in widths) + "  " + "-" * len(head[3]))
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
        counts = ", ".join(f"{len(self._of(s))} {s}" for s in STATUSES if self._of(s))
        lines.append(f"rankops.patch: {counts or 'nothing recognised'}"
                     + (f" (backend {self.backend})" if self.backend else ""))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __len__(self) -> int:
        return len(self.entries)
