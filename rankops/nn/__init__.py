"""nn.Module layers built on the rankops ops (drop-in for torch / TorchRec / DeepCTR layers)."""

from rankops.nn.interaction import DotInteraction, FactorizationMachine

__all__ = ["DotInteraction", "FactorizationMachine"]

from rankops.nn.cin import CIN  # noqa: E402
from rankops.nn.cross import CrossNet  # noqa: E402

__all__ += ["CIN", "CrossNet"]
