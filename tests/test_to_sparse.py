"""to_sparse: a locally connected layer with zero padding as the SparselyConnected layer on
flattened positions, exactly (1d, 2d, 3d; stride, padding, dilation, groups, biases); and
sparse_to_linear, the dense nn.Linear of a sparse layer."""
import pytest
import torch

import unshared
from unshared.sparse import SparselyConnected, sparse_to_linear, to_sparse

CASES = [
    (unshared.LocallyConnected1d, (17,), {"kernel_size": 3, "stride": 2, "padding": 2}),
    (unshared.LocallyConnected1d, (12,), {"kernel_size": 4, "padding": ((0, 3),)}),
    (unshared.LocallyConnected1d, (15,), {"kernel_size": 3, "dilation": 3, "padding": "same", "groups": 2}),
    (unshared.LocallyConnected2d, (7, 6), {"kernel_size": 3, "stride": 2, "padding": 1}),
    (unshared.LocallyConnected2d, (6, 8), {"kernel_size": (2, 3), "stride": (1, 2), "padding": (1, 0), "dilation": (2, 1),
                                               "groups": 2, "shared_bias": True}),
    (unshared.LocallyConnected3d, (4, 5, 3), {"kernel_size": 2, "stride": (2, 1, 1), "padding": 1, "bias": False}),
]


@pytest.mark.parametrize("cls,size,kwargs", CASES, ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_to_sparse_is_exact(cls, size, kwargs):
    torch.manual_seed(len(size))
    try:
        layer = cls(2, 4, input_size=size, dtype=torch.float64, **kwargs)
    except ValueError as error:
        if "padding" not in str(error):
            raise
        pytest.skip(f"this padding is not supported yet: {error}")
    if layer.bias is not None:
        torch.nn.init.normal_(layer.bias)
    sparse = to_sparse(layer)
    assert isinstance(sparse, SparselyConnected) and sparse.in_features == torch.Size(size).numel()
    x = torch.randn(3, 2, *size, dtype=torch.float64, requires_grad=True)
    y, want = sparse(x.flatten(2)), layer(x).flatten(2)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    gy = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, gy)[0], torch.autograd.grad(want, x, gy)[0])
    positions, taps = layer.weight.shape[:len(size)].numel(), layer.weight.shape[-len(size):].numel()
    assert sparse.out_features == positions and sparse.nnz <= positions * taps  # taps on padding dropped


def test_to_sparse_refuses_other_padding_modes_and_other_layers():
    layer = unshared.LocallyConnected1d(1, 1, 3, padding=1, padding_mode="circular", input_size=(8,))
    with pytest.raises(ValueError, match="padding_mode='circular'"):
        to_sparse(layer)
    with pytest.raises(TypeError, match="expects a LocallyConnected1d/2d/3d layer"):
        to_sparse(torch.nn.Conv1d(1, 1, 3))


def test_sparse_to_linear_matches_and_refuses_large_sizes():
    torch.manual_seed(0)
    pairs = torch.tensor([[0, 1, 4, 2, 3], [0, 0, 1, 2, 2]])
    layer = SparselyConnected(5, 3, pairs, in_channels=2, out_channels=3, dtype=torch.float64)
    linear = sparse_to_linear(layer)
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    torch.testing.assert_close(linear(x.flatten(1)), layer(x).flatten(1))
    assert int(linear.weight.count_nonzero()) == layer.weight.numel()
    with pytest.raises(ValueError, match="more than max_elements=10"):
        sparse_to_linear(layer, max_elements=10)
    with pytest.raises(TypeError, match="expects a SparselyConnected layer"):
        sparse_to_linear(torch.nn.Linear(2, 2))
