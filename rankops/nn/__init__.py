"""nn.Module layers built on the rankops ops (drop-in for torch / TorchRec / DeepCTR layers)."""

from rankops.nn.embedding_bag import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor  # noqa: F401
