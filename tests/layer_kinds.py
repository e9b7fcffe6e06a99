"""Every kind of layer in the family, small, for the tests that put each through a tool
(tracing, compiling, FLOP counting, Opacus)."""
import torch

import unshared

#: name -> (a function making a fresh layer, the input shape without the batch)
KINDS = {
    "1d": (lambda: unshared.LocallyConnected1d(3, 4, 3, padding=1, padding_mode="reflect", input_size=9), (3, 9)),
    "2d": (lambda: unshared.LocallyConnected2d(4, 6, 3, stride=2, padding=1, groups=2, input_size=(7, 8)), (4, 7, 8)),
    "3d": (lambda: unshared.LocallyConnected3d(2, 3, 2, dilation=(1, 2, 1), input_size=(3, 5, 4)), (2, 3, 5, 4)),
    "transposed-1d": (lambda: unshared.LocallyConnectedTranspose1d(3, 2, 3, stride=2, input_size=6), (3, 6)),
    "transposed-2d": (lambda: unshared.LocallyConnectedTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1,
                                                                   input_size=(4, 5)), (3, 4, 5)),
    "transposed-3d": (lambda: unshared.LocallyConnectedTranspose3d(2, 2, 2, input_size=(2, 3, 2)), (2, 2, 3, 2)),
    # few positions per bank: the locally connected kernels read the banks; many: convolutions per bank
    "tiled-kernels": (lambda: unshared.TiledLocallyConnected2d(3, 4, 3, input_size=8, tile_size=(3, 5)), (3, 8, 8)),
    "tiled-conv": (lambda: unshared.TiledLocallyConnected2d(3, 4, 3, padding=1, input_size=16, tile_size=2),
                   (3, 16, 16)),
    "region": (lambda: unshared.RegionLocallyConnected1d(3, 4, 3, input_size=14, regions=3), (3, 14)),
    "low-rank": (lambda: unshared.LowRankLocallyConnected2d(3, 4, 3, input_size=7, rank=2), (3, 7, 7)),
    "low-rank-factorized": (lambda: unshared.LowRankLocallyConnected1d(3, 4, 3, input_size=9, rank=3,
                                                                       combining="factorized"), (3, 9)),
    "lazy-2d": (lambda: unshared.LazyLocallyConnected2d(4, 3, shared_bias=True), (3, 6, 7)),
    "lazy-transposed-1d": (lambda: unshared.LazyLocallyConnectedTranspose1d(2, 3, stride=2), (3, 5)),
}


def make(name: str, seed: int = 0, initialise: bool = True):
    """A fresh layer of kind ``name`` (seeded), and a function giving inputs of any batch size;
    lazy layers are initialised by one call unless ``initialise`` is false."""
    factory, shape = KINDS[name]
    torch.manual_seed(seed)
    layer = factory()

    def inputs(batch: int) -> torch.Tensor:
        return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed + batch))

    if initialise:
        layer(inputs(1))
    return layer, inputs
