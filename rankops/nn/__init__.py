"""nn.Module layers built on the rankops ops (drop-in for torch / TorchRec / DeepCTR layers)."""

from rankops.nn.interaction import DotInteraction, FactorizationMachine
from rankops.nn.embedding_bag import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

__all__ = ["DotInteraction", "FactorizationMachine"]
__all__ += ["EmbeddingBagCollection", "EmbeddingBagConfig", "KeyedJaggedTensor"]
