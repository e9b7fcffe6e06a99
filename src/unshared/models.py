"""Reference networks built from locally connected layers."""
from __future__ import annotations

from torch import Tensor, nn

from .modules import LocallyConnected2d

__all__ = ["DeepFace"]


class DeepFace(nn.Module):
    """DeepFace (Taigman, Yang, Ranzato, Wolf, "DeepFace: closing the gap to human-level performance
    in face verification", CVPR 2014) on aligned ``(N, 3, 152, 152)`` faces.

    ==== ============================================ ================
    name layer                                        output
    ==== ============================================ ================
    C1   conv 32 filters 11x11                        32 x 142 x 142
    M2   max-pool 3x3 stride 2 (ceil mode)            32 x 71 x 71
    C3   conv 16 filters 9x9                          16 x 63 x 63
    L4   locally connected 16 filters 9x9             16 x 55 x 55
    L5   locally connected 16 filters 7x7 stride 2    16 x 25 x 25
    L6   locally connected 16 filters 5x5             16 x 21 x 21
    F7   fully connected 4096, dropout                4096
    F8   fully connected ``num_classes``              num_classes
    ==== ============================================ ================

    ReLU follows every layer but F8. With per-position biases the network has 118,923,774
    parameters for 4030 classes, 62,726,400 of them the weights of L4.

    Args:
        num_classes: outputs of F8. Default: 4030 (the identities of the paper's SFC data set).
        dropout: dropout probability on F7. Default: 0.5.
        device, dtype: factory arguments for all parameters (``device="meta"`` builds it for free).

    Shape:
        ``(N, 3, 152, 152)`` -> ``(N, num_classes)`` logits; ``features(x)`` gives the F7
        representation ``(N, 4096)`` used for verification.
    """

    def __init__(self, num_classes: int = 4030, dropout: float = 0.5, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 32, 11, **kw), nn.ReLU(inplace=True),                        # C1
            nn.MaxPool2d(3, 2, ceil_mode=True),                                        # M2
            nn.Conv2d(32, 16, 9, **kw), nn.ReLU(inplace=True),                         # C3
            LocallyConnected2d(16, 16, 9, input_size=63, **kw), nn.ReLU(inplace=True),            # L4
            LocallyConnected2d(16, 16, 7, stride=2, input_size=55, **kw), nn.ReLU(inplace=True),  # L5
            LocallyConnected2d(16, 16, 5, input_size=25, **kw), nn.ReLU(inplace=True),            # L6
            nn.Flatten(),
            nn.Linear(16 * 21 * 21, 4096, **kw), nn.ReLU(inplace=True), nn.Dropout(dropout),     # F7
        )
        self.classifier = nn.Linear(4096, num_classes, **kw)                           # F8

    def features(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.trunk(x))
