"""nn.Module layers built on the rankops ops (drop-in for torch / TorchRec / DeepCTR layers)."""

from rankops.nn.attention import DINAttention, MultiHeadTargetAttention
from rankops.nn.cin import CIN
from rankops.nn.cross import CrossNet
from rankops.nn.embedding_bag import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from rankops.nn.experts import MMoE, PLE
from rankops.nn.interaction import DotInteraction, FactorizationMachine
from rankops.nn.mlp import MLP
from rankops.nn.self_attention import InteractingLayer, TransformerBlock

__all__ = ["DINAttention", "MultiHeadTargetAttention"]
__all__ += ["EmbeddingBagCollection", "EmbeddingBagConfig", "KeyedJaggedTensor"]
__all__ += ["DotInteraction", "FactorizationMachine"]
__all__ += ["CIN", "CrossNet"]
__all__ += ["InteractingLayer", "MLP", "MMoE", "PLE", "TransformerBlock"]
from rankops.nn.bias_tower import BiasTower  # noqa: E402
from rankops.nn.sparse_sharing import SparseSharing, SparseSharingLayer  # noqa: E402

__all__ += ["BiasTower", "SparseSharing", "SparseSharingLayer"]
from rankops.nn.pooling import AdditiveAttentionPooling, MeanPooling  # noqa: E402
from rankops.nn.text import TextEncoder  # noqa: E402

__all__ += ["AdditiveAttentionPooling", "MeanPooling", "TextEncoder"]
from rankops.nn.hash_embedding import CollisionlessEmbeddingBagCollection, CollisionlessIds, HashedIds, IdTable  # noqa: E402

__all__ += ["CollisionlessEmbeddingBagCollection", "CollisionlessIds", "HashedIds", "IdTable"]
