"""rankops.nn.TextEncoder and padded_tokens: padding changes nothing, order matters once there is a
transformer layer, the lookup runs on the fused op (equal to the reference), and the errors."""

import pytest
import torch

import rankops
from rankops.nn import TextEncoder
from rankops.nn.text import padded_tokens


def _tokens():
    return torch.tensor([[3, 9, 4, 0, 0], [7, 0, 0, 0, 0], [0, 0, 0, 0, 0], [5, 6, 7, 8, 2]])


def test_padded_tokens():
    values, offsets = torch.tensor([3, 9, 4, 7, 5, 6, 7, 8, 2, 1]), torch.tensor([0, 3, 4, 4, 10])
    out = padded_tokens(values, offsets, 5)
    torch.testing.assert_close(out, _tokens())  # the last bag is cut at 5
    assert padded_tokens(torch.zeros(0, dtype=torch.int64), torch.zeros(3, dtype=torch.int64), 2).shape == (2, 2)


@pytest.mark.parametrize("layers", [0, 2])
def test_padding_is_ignored(layers):
    torch.manual_seed(0)
    enc = TextEncoder(10, embed_dim=8, max_len=7, num_layers=layers).eval()
    t = _tokens()
    out = enc(t)
    assert out.shape == (4, 8)
    # more padding columns, same titles
    torch.testing.assert_close(enc(torch.cat([t, torch.zeros(4, 2, dtype=torch.int64)], 1)), out)
    assert torch.equal(out[2], torch.zeros(8))  # all padding
    # each title alone: no title sees another's tokens
    torch.testing.assert_close(enc(t[:1]), out[:1])


def test_order_matters_with_a_transformer_only_through_positions():
    torch.manual_seed(0)
    enc = TextEncoder(10, embed_dim=8, max_len=5, num_layers=1).eval()
    a, b = torch.tensor([[3, 9, 4]]), torch.tensor([[4, 9, 3]])
    assert not torch.allclose(enc(a), enc(b))
    with torch.no_grad():
        enc.positions.zero_()
    torch.testing.assert_close(enc(a), enc(b))  # without positions self-attention is order-blind


def test_fused_lookup_equals_reference_and_trains():
    torch.manual_seed(0)
    enc = TextEncoder(10, embed_dim=8, max_len=5, num_layers=1, pooling="mean")
    t = _tokens()
    out = enc(t)
    out.square().sum().backward()
    g = enc.tokens.weights[0].grad.clone()
    assert g[0].abs().sum() == 0 and g[3].abs().sum() > 0  # padding row untouched, used rows trained
    enc.zero_grad()
    with rankops.use_backend("reference"):
        ref = enc(t)
        ref.square().sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(enc.tokens.weights[0].grad, g)


def test_errors():
    enc = TextEncoder(10, embed_dim=8, max_len=4)
    with pytest.raises(ValueError, match="max_len"):
        enc(torch.ones(2, 5, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer"):
        enc(torch.ones(2, 3))
    with pytest.raises(IndexError):
        enc(torch.tensor([[11, 1]]))
    with pytest.raises(ValueError, match="vocab_size"):
        TextEncoder(1)
    with pytest.raises(ValueError, match="pooling"):
        TextEncoder(10, 8, 4, pooling="max")
