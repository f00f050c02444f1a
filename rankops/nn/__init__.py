"""nn.Module layers built on the rankops ops (drop-in for torch / TorchRec / DeepCTR layers)."""

__all__: list[str] = []

from rankops.nn.attention import DINAttention, MultiHeadTargetAttention  # noqa: E402

__all__ += ["DINAttention", "MultiHeadTargetAttention"]
