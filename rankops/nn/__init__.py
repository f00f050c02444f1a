"""nn.Module layers built on the rankops ops (drop-in for torch / TorchRec / DeepCTR layers)."""

from rankops.nn.interaction import DotInteraction, FactorizationMachine

__all__ = ["DotInteraction", "FactorizationMachine"]
