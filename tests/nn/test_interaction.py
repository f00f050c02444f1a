import pytest
import torch

import rankops
from rankops.nn import DotInteraction, FactorizationMachine
from tests.utils import assert_close


def deepctr_fm(x):
    """DeepCTR-Torch's FM layer, verbatim formula."""
    square_of_sum = torch.pow(torch.sum(x, dim=1, keepdim=True), 2)
    sum_of_square = torch.sum(x * x, dim=1, keepdim=True)
    return 0.5 * torch.sum(square_of_sum - sum_of_square, dim=2, keepdim=False)


def torchrec_interaction(dense, sparse):
    """TorchRec InteractionArch: cat(dense, triu pairs of [dense; sparse]) (its offset=1 upper
    triangle of the Gram matrix is, by symmetry, our lower triangle, but ordered column-major)."""
    combined = torch.cat([dense.unsqueeze(1), sparse], 1)
    gram = torch.bmm(combined, combined.transpose(1, 2))
    F = combined.shape[1]
    i, j = torch.tril_indices(F, F, offset=-1)
    return torch.cat([dense, gram[:, i, j]], 1)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_fm_layer_matches_deepctr(backend):
    x = torch.randn(16, 39, 16, requires_grad=True)
    with rankops.use_backend(backend):
        out = FactorizationMachine()(x)
    expected = deepctr_fm(x)
    assert_close(out, expected, 1e-4, 1e-5)
    g, = torch.autograd.grad(out.sum(), x)
    g_ref, = torch.autograd.grad(expected.sum(), x)
    assert_close(g, g_ref, 1e-4, 1e-5)
    assert FactorizationMachine(reduce_sum=False)(x).shape == (16, 16)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_dot_layer_dense_and_sparse(backend):
    dense, sparse = torch.randn(8, 32), torch.randn(8, 26, 32)
    layer = DotInteraction()
    with rankops.use_backend(backend):
        out = layer(dense, sparse)
    assert out.shape == (8, layer.output_dim(26, dense_dim=32)) == (8, 32 + 27 * 26 // 2)
    assert_close(out, torchrec_interaction(dense, sparse), 1e-4, 1e-5)
    with pytest.raises(ValueError, match="dense must be"):
        layer(dense, torch.randn(8, 26, 16))
