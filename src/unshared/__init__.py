"""unshared: locally connected layers (convolutions with unshared weights) for PyTorch."""
from . import functional
from .modules import (
    LazyLocallyConnected1d,
    LazyLocallyConnected2d,
    LazyLocallyConnected3d,
    LocallyConnected1d,
    LocallyConnected2d,
    LocallyConnected3d,
)

__version__ = "0.1.0"

__all__ = [
    "LocallyConnected1d",
    "LocallyConnected2d",
    "LocallyConnected3d",
    "LazyLocallyConnected1d",
    "LazyLocallyConnected2d",
    "LazyLocallyConnected3d",
    "functional",
    "__version__",
]
