"""Argument checks shared by the public ops: raise a clear Python exception naming the argument."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def tensor(op: str, name: str, t, ndim: int | None = None, dims: str = "") -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"rankops.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"rankops.{op}: {name} must be {ndim}-D {dims}, got shape {tuple(t.shape)}")
    return t


def floating(op: str, name: str, t: torch.Tensor) -> torch.Tensor:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"rankops.{op}: {name} must be float32, float16 or bfloat16, got {t.dtype}")
    return t


def integer(op: str, name: str, t: torch.Tensor) -> torch.Tensor:
    if t.dtype not in INDEX_DTYPES:
        raise TypeError(f"rankops.{op}: {name} must be int32 or int64, got {t.dtype}")
    return t


def same_dtype(op: str, ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.dtype != ref.dtype:
            raise TypeError(f"rankops.{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; they must match")


def same_device(op: str, ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"rankops.{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; they must match")
