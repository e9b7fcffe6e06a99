"""unshared: locally connected layers (convolutions with unshared weights) for PyTorch."""
from . import functional, interop, models, sparse, topography
from .analysis import translation_equivariance_error
from .backends.ops import decompositions
from .conversions import ConvConversion, from_conv, from_conv_transpose, from_linear, to_conv, to_linear
from .costs import LayerCost, layer_costs
from .lowrank import LowRankLocallyConnected1d, LowRankLocallyConnected2d, LowRankLocallyConnected3d
from .modules import (
    LazyLocallyConnected1d,
    LazyLocallyConnected2d,
    LazyLocallyConnected3d,
    LocallyConnected1d,
    LocallyConnected2d,
    LocallyConnected3d,
)
from .sparse import SparselyConnected, to_sparse
from .sharing import (
    RegionLocallyConnected1d,
    RegionLocallyConnected2d,
    RegionLocallyConnected3d,
    TiledLocallyConnected1d,
    TiledLocallyConnected2d,
    TiledLocallyConnected3d,
)
from .transposed import (
    LazyLocallyConnectedTranspose1d,
    LazyLocallyConnectedTranspose2d,
    LazyLocallyConnectedTranspose3d,
    LocallyConnectedTranspose1d,
    LocallyConnectedTranspose2d,
    LocallyConnectedTranspose3d,
)
from .tying import share_every, share_weights_, untie

__version__ = "0.1.0"

__all__ = [
    "LocallyConnected1d", "LocallyConnected2d", "LocallyConnected3d",
    "LazyLocallyConnected1d", "LazyLocallyConnected2d", "LazyLocallyConnected3d",
    "TiledLocallyConnected1d", "TiledLocallyConnected2d", "TiledLocallyConnected3d",
    "RegionLocallyConnected1d", "RegionLocallyConnected2d", "RegionLocallyConnected3d",
    "LowRankLocallyConnected1d", "LowRankLocallyConnected2d", "LowRankLocallyConnected3d",
    "LocallyConnectedTranspose1d", "LocallyConnectedTranspose2d", "LocallyConnectedTranspose3d",
    "LazyLocallyConnectedTranspose1d", "LazyLocallyConnectedTranspose2d", "LazyLocallyConnectedTranspose3d",
    "SparselyConnected",
    "from_conv", "from_conv_transpose", "to_conv", "to_linear", "from_linear", "ConvConversion", "to_sparse",
    "untie", "share_weights_", "share_every",
    "layer_costs", "LayerCost", "translation_equivariance_error", "decompositions",
    "functional", "interop", "models", "sparse", "topography", "__version__",
]
