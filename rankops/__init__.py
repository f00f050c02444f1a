"""rankops: fused kernels and reference models for ranking (CTR / recommendation) models."""

__version__ = "0.1.0"

from rankops.backend import current as current_backend  # noqa: E402
from rankops.backend import info, use_backend  # noqa: E402
from rankops.cpu_memory import keep_freed_memory  # noqa: E402
from rankops.ops.activation import dice  # noqa: E402
from rankops.ops.attention import din_attention, jagged_target_attention, target_attention  # noqa: E402
from rankops.ops.cin import cin_layer  # noqa: E402
from rankops.ops.cross import (cross_layer, cross_layer_lowrank, cross_layer_v1, cross_net, cross_net_lowrank,  # noqa: E402
                               cross_net_v1)
from rankops.ops.embedding_bag import batched_embedding_bag, embedding_bag, fused_batched_embedding_bag  # noqa: E402
from rankops.ops.hash_embedding import hash_insert, hash_lookup  # noqa: E402
from rankops.ops.interaction import dot_interaction, fm_interaction  # noqa: E402

from rankops import nn  # noqa: E402  (after the ops: the layers import them)
from rankops.patch import PatchReport, patch, unpatch  # noqa: E402  (after nn: the patches use its layers)
from rankops import _models_path  # noqa: E402,F401  (rankops.models from a source checkout)

__all__ = ["__version__", "current_backend", "info", "keep_freed_memory", "nn", "use_backend"]
__all__ += ["dice", "din_attention", "jagged_target_attention", "target_attention"]
__all__ += ["batched_embedding_bag", "embedding_bag", "fused_batched_embedding_bag"]
__all__ += ["dot_interaction", "fm_interaction"]
__all__ += ["hash_insert", "hash_lookup"]
__all__ += ["cin_layer", "cross_layer", "cross_layer_lowrank", "cross_layer_v1", "cross_net", "cross_net_lowrank",
            "cross_net_v1"]
__all__ += ["PatchReport", "patch", "unpatch"]
