"""rankops.nn attention layers against torch.nn.MultiheadAttention and a literal DIN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rankops
from rankops.nn import DINAttention, MultiHeadTargetAttention
from rankops.ops.attention import reference as ref
from tests.utils import assert_close, backend_devices, on


@pytest.mark.parametrize("backend,device", backend_devices("reference", "cpp", "triton"))
@pytest.mark.parametrize("Q", [1, 4])
def test_mhta_matches_torch_mha(backend, device, Q):
    torch.manual_seed(0)
    B, L, E, H = 3, 11, 32, 4
    mha = nn.MultiheadAttention(E, H, batch_first=True)
    mine = MultiHeadTargetAttention(E, H).load_from_torch(mha)
    query, keys = torch.randn(B, Q, E), torch.randn(B, L, E)
    lengths = torch.tensor([11, 1, 6])
    pad = torch.arange(L)[None, :] >= lengths[:, None]  # True = ignore
    want, _ = mha(query, keys, keys, key_padding_mask=pad, need_weights=False)
    want.sum().backward()
    with on(backend, device):
        got = mine(query, keys, lengths=lengths)
        got.sum().backward()
    assert_close(got, want, atol=2e-5, rtol=2e-5, name="out")
    assert_close(mine.k_proj.weight.grad, mha.in_proj_weight.grad[E:2 * E], atol=2e-5, rtol=2e-5, name="dWk")
    assert_close(mine.q_proj.weight.grad, mha.in_proj_weight.grad[:E], atol=2e-5, rtol=2e-5, name="dWq")


def test_mhta_jagged_and_single_query():
    torch.manual_seed(1)
    B, L, E, H = 3, 9, 16, 2
    m = MultiHeadTargetAttention(E, H)
    query, keys = torch.randn(B, E), torch.randn(B, L, E)
    lengths = torch.tensor([4, 0, 9])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    packed = torch.cat([keys[b, : lengths[b]] for b in range(B)])
    with rankops.use_backend("cpp"):
        padded = m(query, keys, lengths=lengths)
        jagged = m(query, packed, offsets=offsets)
    assert padded.shape == (B, E)
    assert_close(jagged, padded, atol=1e-5, rtol=1e-5, name="jagged vs padded")
    # no behaviour: attention gives 0, so the output is the out-projection's bias
    assert_close(padded[1], m.out_proj.bias, atol=1e-6, rtol=0, name="empty user")
    with pytest.raises(ValueError, match="exactly one of lengths"):
        m(query, keys)


def literal_din(layer: DINAttention, q, keys, lengths, stats=None):
    w = [(lin.weight, lin.bias) for lin in layer.layers] + [(None, None)]
    alphas = tuple(layer.alphas) + (None, None)
    return ref.din_attention_concat(q, keys, lengths, w[0][0], w[0][1], w[1][0], w[1][1], layer.out.weight,
                                    layer.out.bias, layer.activation, layer.normalize, alphas[:2],
                                    stats or (None, None), layer.eps)


@pytest.mark.parametrize("activation", ["dice", "prelu", "sigmoid"])
@pytest.mark.parametrize("hidden", [(80, 40), (16,)], ids=["80-40", "16"])
def test_din_layer(activation, hidden):
    torch.manual_seed(2)
    B, L, E = 4, 7, 8
    layer = DINAttention(E, hidden=hidden, activation=activation)
    with torch.no_grad():
        for a in layer.alphas:
            a.uniform_(-0.5, 0.5)  # not the zero init, so the alpha path is exercised
    q, keys, lengths = torch.randn(B, E), torch.randn(B, L, E), torch.tensor([7, 0, 3, 5])
    got = layer(q, keys, lengths)
    want = literal_din(layer, q, keys, lengths)  # training: batch statistics for Dice
    assert_close(got, want, atol=1e-5, rtol=1e-4, name="train")
    got.sum().backward()
    assert layer.layers[0].weight.grad is not None and torch.isfinite(layer.layers[0].weight.grad).all()
    if activation == "dice":
        assert not torch.equal(layer.running_mean0, torch.zeros_like(layer.running_mean0)), "running stats updated"
        layer.eval()
        stats = tuple((getattr(layer, f"running_mean{i}"), getattr(layer, f"running_var{i}"))
                      for i in range(len(hidden))) + (None,)
        assert_close(layer(q, keys, lengths), literal_din(layer, q, keys, lengths, stats[:2]), atol=1e-5,
                     rtol=1e-4, name="eval")


def test_din_layer_bad_config():
    with pytest.raises(ValueError, match="one or two hidden"):
        DINAttention(8, hidden=(4, 4, 4))
    with pytest.raises(ValueError, match="activation"):
        DINAttention(8, activation="relu")
