"""rankops.nn.AdditiveAttentionPooling and MeanPooling: the formula, the masking of padding, empty
sequences, and the errors."""

import pytest
import torch

from rankops.nn import AdditiveAttentionPooling, MeanPooling


@pytest.fixture(scope="module")
def seq():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 7, 6, generator=g), torch.tensor([7, 3, 1, 0, 5])


def test_matches_the_formula(seq):
    x, lengths = seq
    pool = AdditiveAttentionPooling(6, hidden_dim=4)
    out, alpha = pool(x, lengths=lengths, return_weights=True)
    for b in range(5):
        n = int(lengths[b])
        if n == 0:
            continue
        a = pool.query(torch.tanh(pool.proj(x[b, :n])))[:, 0]
        w = torch.softmax(a, 0)
        torch.testing.assert_close(alpha[b, :n], w)
        torch.testing.assert_close(out[b], w @ x[b, :n])
    assert (alpha.sum(1)[lengths > 0] - 1).abs().max() < 1e-6


def test_padding_is_ignored_and_empty_gives_zeros(seq):
    x, lengths = seq
    pool = AdditiveAttentionPooling(6)
    noisy = x.clone()
    noisy[torch.arange(7)[None, :] >= lengths[:, None]] = 1e3  # garbage past each length
    x.requires_grad_(True)
    out = pool(x, lengths=lengths)
    torch.testing.assert_close(pool(noisy, lengths=lengths), out.detach())
    assert torch.equal(out[3], torch.zeros(6))  # length 0
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad[3], torch.zeros(7, 6))
    x.requires_grad_(False)


def test_mask_equals_lengths_and_mean(seq):
    x, lengths = seq
    mask = torch.arange(7)[None, :] < lengths[:, None]
    pool = AdditiveAttentionPooling(6)
    torch.testing.assert_close(pool(x, mask=mask), pool(x, lengths=lengths))
    mean = MeanPooling()
    torch.testing.assert_close(mean(x, mask=mask), mean(x, lengths=lengths))
    torch.testing.assert_close(mean(x, lengths=lengths)[1], x[1, :3].mean(0))


def test_attention_can_select_what_mean_cannot():
    # the query can learn to ignore one kind of element: with a large score gap the pooled vector
    # is the mean of the other kind alone, whatever their share
    pool = AdditiveAttentionPooling(2, hidden_dim=1)
    with torch.no_grad():
        pool.proj.weight.copy_(torch.tensor([[0.0, 10.0]]))
        pool.proj.bias.zero_()
        pool.query.weight.fill_(10.0)
    x = torch.tensor([[[1.0, 1.0], [5.0, -1.0], [5.0, -1.0]]])
    out = pool(x, lengths=torch.tensor([3]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0]]), atol=1e-4, rtol=0)
    assert not torch.allclose(MeanPooling()(x, lengths=torch.tensor([3])), out)


def test_errors(seq):
    x, lengths = seq
    pool = AdditiveAttentionPooling(6)
    with pytest.raises(ValueError, match="exactly one"):
        pool(x)
    with pytest.raises(ValueError, match=r"\[B, L, 6\]"):
        pool(x[..., :5], lengths=lengths)
    with pytest.raises(ValueError, match="mask must be"):
        pool(x, mask=torch.ones(5, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=">= 1"):
        AdditiveAttentionPooling(0)
