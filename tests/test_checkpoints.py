"""Checkpoints: safetensors round trip and refusal of weights made for another input size."""
import pytest
import torch
from torch import nn

import unshared

st = pytest.importorskip("safetensors.torch", reason="safetensors is not installed")


def _net(size=8, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        unshared.LocallyConnected2d(3, 4, 3, padding=1, input_size=size), nn.ReLU(),
        unshared.TiledLocallyConnected2d(4, 2, 2, input_size=size, tile_size=2, shared_bias=True),
        unshared.LowRankLocallyConnected2d(2, 2, 3, input_size=size - 1, rank=2))


def test_safetensors_round_trip_is_exact(tmp_path):
    net, other = _net(seed=0), _net(seed=1)
    st.save_model(net, str(tmp_path / "net.safetensors"))
    missing, unexpected = st.load_model(other, str(tmp_path / "net.safetensors"))
    assert not missing and not unexpected
    for (name, a), b in zip(net.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(net(x), other(x))
    # the loaded weight keeps the layout the computation reads without a copy
    assert other[0].weight.stride() == net[0].weight.stride()


def test_safetensors_weights_for_another_input_size_are_refused(tmp_path):
    st.save_model(_net(size=8), str(tmp_path / "net.safetensors"))
    with pytest.raises(ValueError, match=r"made for output size \(8, 8\), but this layer has output size "
                                         r"\(9, 9\) \(input_size=\(9, 9\)\)"):
        st.load_model(_net(size=9), str(tmp_path / "net.safetensors"))


def test_torch_save_round_trip(tmp_path):
    net, other = _net(seed=0), _net(seed=1)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    other.load_state_dict(torch.load(tmp_path / "net.pt", weights_only=True))
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(net(x), other(x))
