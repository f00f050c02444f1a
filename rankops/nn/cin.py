"""xDeepFM's Compressed Interaction Network on the fused cin_layer op."""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch
from torch import Tensor, nn

from rankops.nn.cross import _activation
from rankops.ops.cin import cin_layer


class CIN(nn.Module):
    r"""Compressed Interaction Network (xDeepFM) over field embeddings ``x0 [B, M, D]``.

    Layer k maps ``x^k [B, H_k, D]`` to ``a^{k+1}[b,n,d] = act(sum_{h,i} W_k[n,h,i] x^k[b,h,d] x0[b,i,d] + b_k[n])``
    (``x^0 = x0``) without forming the outer product (``rankops.cin_layer``). With ``split_half``
    the first half of each non-final layer's maps feeds the next layer and the second half goes to
    the output; otherwise all maps do both. The output concatenates those direct maps and sums them
    over D: ``[B, sum(layer_sizes[:-1]) // 2 + layer_sizes[-1]]`` with split_half, else
    ``[B, sum(layer_sizes)]`` (DeepCTR-Torch's CIN and the xDeepFM paper).

    Parameters: ``weights[k] [layer_sizes[k], H_k, M]`` and ``biases[k] [layer_sizes[k]]``;
    DeepCTR-Torch's ``conv1ds[k].weight`` is ``weights[k].reshape(Hn, H_k * M, 1)``
    (``rankops.nn.convert.cin_from_deepctr``).

    Example::

        cin = CIN(num_fields=39, layer_sizes=(200, 200, 200))
        y = cin(torch.randn(4096, 39, 16))          # [4096, 100 + 100 + 200]
    """

    def __init__(
        self,
        num_fields: int,
        layer_sizes: Sequence[int],
        split_half: bool = True,
        activation: Union[str, Callable[[Tensor], Tensor], None] = "relu",
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        layer_sizes = [int(s) for s in layer_sizes]
        if num_fields < 1:
            raise ValueError(f"rankops.nn.CIN: num_fields must be >= 1, got {num_fields}")
        if not layer_sizes or min(layer_sizes) < 1:
            raise ValueError(f"rankops.nn.CIN: layer_sizes must be a non-empty list of sizes >= 1, got {layer_sizes}")
        if split_half:
            odd = [(k, s) for k, s in enumerate(layer_sizes[:-1]) if s % 2]
            if odd:
                raise ValueError(
                    f"rankops.nn.CIN: with split_half=True every layer size but the last must be even (half feeds "
                    f"the next layer, half the output); layer_sizes[{odd[0][0]}] = {odd[0][1]}"
                )
        self.num_fields, self.layer_sizes, self.split_half = num_fields, layer_sizes, split_half
        self.activation = activation
        self._act = _activation(activation)
        fk = dict(device=device, dtype=dtype)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList() if bias else None
        H = num_fields
        for k, size in enumerate(layer_sizes):
            self.weights.append(nn.Parameter(torch.empty(size, H, num_fields, **fk)))
            if bias:
                self.biases.append(nn.Parameter(torch.empty(size, **fk)))
            H = size // 2 if split_half and k < len(layer_sizes) - 1 else size
        self.reset_parameters()

    @property
    def output_dim(self) -> int:
        if self.split_half:
            return sum(s // 2 for s in self.layer_sizes[:-1]) + self.layer_sizes[-1]
        return sum(self.layer_sizes)

    def reset_parameters(self) -> None:
        """nn.Conv1d's default initialisation (what DeepCTR-Torch's CIN uses), fan_in = H*M."""
        with torch.no_grad():
            for k, w in enumerate(self.weights):
                bound = 1 / math.sqrt(w.shape[1] * w.shape[2])
                w.uniform_(-bound, bound)
                if self.biases is not None:
                    self.biases[k].uniform_(-bound, bound)

    def forward(self, x0: Tensor) -> Tensor:
        """x0: ``[B, M, D]`` -> ``[B, output_dim]``."""
        if x0.dim() != 3 or x0.shape[1] != self.num_fields:
            raise ValueError(f"rankops.nn.CIN: x0 must be [B, {self.num_fields}, D], got {tuple(x0.shape)}")
        x, direct = x0, []
        last = len(self.layer_sizes) - 1
        for k, size in enumerate(self.layer_sizes):
            a = self._act(cin_layer(x, x0, self.weights[k], None if self.biases is None else self.biases[k]))
            if self.split_half and k < last:
                x, d = a.split(size // 2, 1)
            else:
                x, d = a, a
            direct.append(d)
        return torch.cat(direct, 1).sum(-1)

    def extra_repr(self) -> str:
        return (f"num_fields={self.num_fields}, layer_sizes={self.layer_sizes}, split_half={self.split_half}, "
                f"activation={self.activation!r}")
