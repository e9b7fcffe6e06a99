"""Reference networks built from locally connected layers (DeepFace, cuda-convnet's CIFAR-10 net,
All-TNN), and the TensorFlow CIFAR-10 net whose "local" layers are in fact fully connected."""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .modules import LocallyConnected2d
from .topography import smoothness_loss

__all__ = ["DeepFace", "TFCifar10", "CudaConvnetCifar10", "AllTNN"]


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

    Example (on the meta device: no memory, no computation)::

        >>> import torch, unshared
        >>> net = unshared.models.DeepFace(device="meta")
        >>> sum(p.numel() for p in net.parameters()), net.trunk[5].weight.numel()   # all, L4's weights
        (118923774, 62726400)
        >>> x = torch.empty(2, 3, 152, 152, device="meta")
        >>> net(x).shape, net.features(x).shape
        (torch.Size([2, 4030]), torch.Size([2, 4096]))
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


class _MaxPool2dSame(nn.Module):
    """TensorFlow's ``max_pool(..., padding="SAME")``: ``ceil(in / stride)`` outputs per dimension.

    The input is padded by ``max((out - 1) * stride + kernel_size - in, 0)`` in total, the odd
    element at the end, with ``-inf`` (padding never wins the max).
    """

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, input: Tensor) -> Tensor:
        pads = []
        for size in reversed(input.shape[-2:]):   # F.pad lists the last dimension first
            total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel_size - size, 0)
            pads += [total // 2, total - total // 2]
        return F.max_pool2d(F.pad(input, pads, value=float("-inf")), self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding='SAME'"


def _lrn() -> nn.LocalResponseNorm:
    """Both nets' response normalisation: ``x / (1 + 0.001 / 9 * sum of x^2 over 9 channels)^0.75``."""
    return nn.LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1.0)


class TFCifar10(nn.Module):
    """TensorFlow's CIFAR-10 tutorial network (the ``cifar10.py`` model of the TensorFlow models
    repository) on ``(N, 3, 24, 24)`` crops. Its "local" layers are fully connected.

    ============== ================================================== ===========
    name           layer                                              output
    ============== ================================================== ===========
    conv1          conv 64 filters 5x5, 'SAME' (padding 2), ReLU       64 x 24 x 24
    pool1          max-pool 3x3 stride 2, 'SAME'                       64 x 12 x 12
    norm1          local response norm                                64 x 12 x 12
    conv2          conv 64 filters 5x5, 'SAME' (padding 2), ReLU       64 x 12 x 12
    norm2          local response norm                                64 x 12 x 12
    pool2          max-pool 3x3 stride 2, 'SAME'                       64 x 6 x 6
    local3         fully connected 384, ReLU                          384
    local4         fully connected 192, ReLU                          192
    softmax_linear fully connected ``num_classes`` (logits)           num_classes
    ============== ================================================== ===========

    1,068,298 parameters for 10 classes, 885,120 of them in local3. TensorFlow's
    ``lrn(depth_radius=4, bias=1.0, alpha=0.001 / 9, beta=0.75)`` is
    ``nn.LocalResponseNorm(size=9, alpha=0.001, beta=0.75, k=1)`` (PyTorch's size is
    ``2 * depth_radius + 1`` and it divides alpha by the size). 'SAME' pooling pads 0 before and 1
    after a 24 or 12 map (:class:`_MaxPool2dSame`). Initialisation as the tutorial: truncated
    normal weights (cut at 2 standard deviations) of standard deviation 0.05 (convs), 0.04
    (local3, local4) and 1/192 (softmax_linear); biases 0 (conv1, softmax_linear) or 0.1. The
    tutorial's weight decay (0.004 on local3 and local4) belongs to the optimiser.

    Args:
        num_classes: outputs of softmax_linear. Default: 10.
        device, dtype: factory arguments for all parameters.

    Shape:
        ``(N, 3, 24, 24)`` -> ``(N, num_classes)`` logits. local3 flattens ``pool2`` in PyTorch's
        ``(C, H, W)`` order (TensorFlow's is ``(H, W, C)``: permute its rows to load TF weights).

    Example::

        >>> import torch, unshared
        >>> net = unshared.models.TFCifar10()
        >>> sum(p.numel() for p in net.parameters()), net.local3
        (1068298, Linear(in_features=2304, out_features=384, bias=True))
        >>> net(torch.randn(2, 3, 24, 24)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(3, 64, 5, padding=2, **kw)
        self.pool1 = _MaxPool2dSame(3, 2)
        self.norm1 = _lrn()
        self.conv2 = nn.Conv2d(64, 64, 5, padding=2, **kw)
        self.norm2 = _lrn()
        self.pool2 = _MaxPool2dSame(3, 2)
        self.local3 = nn.Linear(64 * 6 * 6, 384, **kw)
        self.local4 = nn.Linear(384, 192, **kw)
        self.softmax_linear = nn.Linear(192, num_classes, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer, std, bias in ((self.conv1, 5e-2, 0.0), (self.conv2, 5e-2, 0.1), (self.local3, 0.04, 0.1),
                                 (self.local4, 0.04, 0.1), (self.softmax_linear, 1 / 192, 0.0)):
            nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.constant_(layer.bias, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(self.pool1(F.relu(self.conv1(x))))
        x = self.pool2(self.norm2(F.relu(self.conv2(x))))
        x = F.relu(self.local3(x.flatten(-3)))
        return self.softmax_linear(F.relu(self.local4(x)))


class CudaConvnetCifar10(nn.Module):
    """cuda-convnet's 11%-error CIFAR-10 network (Krizhevsky, ``example-layers/layers-conv-local-11pct.cfg``)
    on ``(N, 3, 24, 24)`` crops. Its local layers are locally connected.

    ====== ================================================== ===========
    name   layer                                              output
    ====== ================================================== ===========
    conv1  conv 64 filters 5x5, padding 2, ReLU                64 x 24 x 24
    pool1  max-pool 3x3 stride 2 (ceil mode)                   64 x 12 x 12
    rnorm1 cross-map response norm over 9 maps                 64 x 12 x 12
    conv2  conv 64 filters 5x5, padding 2, ReLU                64 x 12 x 12
    rnorm2 cross-map response norm over 9 maps                 64 x 12 x 12
    pool2  max-pool 3x3 stride 2 (ceil mode)                   64 x 6 x 6
    local3 locally connected 64 filters 3x3, padding 1, ReLU   64 x 6 x 6
    local4 locally connected 32 filters 3x3, padding 1, ReLU   32 x 6 x 6
    fc10   fully connected ``num_classes`` (logits)           num_classes
    ====== ================================================== ===========

    2,112,970 parameters for 10 classes: local3 1,329,408 and local4 664,704 of them.

    Taken from the cfg files (the trunk revision, in which pool1 precedes rnorm1 and rnorm uses
    9 maps; the first revision normalised over 5 maps before pooling and gave local3 32 filters):
    the layer sizes; one bias per filter in the convs (``sharedBiases=1``) and one per filter and
    position in the local layers, as cuda-convnet makes them; pooling windows placed as
    cuda-convnet does, ``ceil((in - 3) / 2) + 1`` of them, the last one clipped at the border
    (PyTorch's ceil mode); ``scale=0.001, pow=0.75`` of ``layer-params-conv-local-11pct.cfg``
    with cuda-convnet's division of the scale by the size,
    ``x / (1 + 0.001 / 9 * sum over the 9 maps centred on x of x^2)^0.75``, which is
    ``nn.LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1)``; initialisation ``N(0, initW^2)``
    with the cfg's ``initW`` (conv1 1e-4, conv2 0.01, local3 and local4 0.04, fc10 0.01) and zero
    biases. Chosen here: fc10 reads local4's output flattened in PyTorch's ``(C, H, W)`` order, and
    returns logits (cuda-convnet's softmax and log-loss belong to the loss). The weight decay of
    the layer-params file (0.004 on local3 and local4, 0.01 on fc10) belongs to the optimiser.

    Args:
        num_classes: outputs of fc10. Default: 10.
        device, dtype: factory arguments for all parameters.

    Shape:
        ``(N, 3, 24, 24)`` -> ``(N, num_classes)`` logits.

    Example::

        >>> import torch, unshared
        >>> net = unshared.models.CudaConvnetCifar10()
        >>> sum(p.numel() for p in net.parameters()), tuple(net.local3.weight.shape)
        (2112970, (6, 6, 64, 64, 3, 3))
        >>> net(torch.randn(2, 3, 24, 24)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(3, 64, 5, padding=2, **kw)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.rnorm1 = _lrn()
        self.conv2 = nn.Conv2d(64, 64, 5, padding=2, **kw)
        self.rnorm2 = _lrn()
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.local3 = LocallyConnected2d(64, 64, 3, padding=1, input_size=6, **kw)
        self.local4 = LocallyConnected2d(64, 32, 3, padding=1, input_size=6, **kw)
        self.fc10 = nn.Linear(32 * 6 * 6, num_classes, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer, std in ((self.conv1, 1e-4), (self.conv2, 0.01), (self.local3, 0.04), (self.local4, 0.04),
                           (self.fc10, 0.01)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.rnorm1(self.pool1(F.relu(self.conv1(x))))
        x = self.pool2(self.rnorm2(F.relu(self.conv2(x))))
        x = F.relu(self.local4(F.relu(self.local3(x))))
        return self.fc10(x.flatten(-3))


class AllTNN(nn.Module):
    """The All-topographic neural network (All-TNN; Lu, Doerig, Bosch, Krahmer, Kaiser, Cichy,
    Kietzmann, "End-to-end topographic networks as models of cortical map formation and human
    visual behaviour", 2025, arXiv:2308.09431; code KietzmannLab/All-TNN) on ``(N, 3, 150, 150)``
    images: six locally connected layers trained with a spatial smoothness loss on their weights.

    ====== ================================================ ===============
    name   layer                                            output
    ====== ================================================ ===============
    layer1 locally connected 64 filters 7x7 stride 3, ReLU   64 x 48 x 48
    pool   max-pool 2x2                                      64 x 24 x 24
    layer2 locally connected 81 filters 3x3, ReLU            81 x 22 x 22
    layer3 locally connected 81 filters 3x3, ReLU            81 x 20 x 20
    pool   max-pool 2x2                                      81 x 10 x 10
    layer4 locally connected 256 filters 3x3, ReLU           256 x 8 x 8
    layer5 locally connected 256 filters 3x3, ReLU           256 x 6 x 6
    pool   max-pool 2x2                                      256 x 3 x 3
    layer6 locally connected 2500 filters 3x3, ReLU          2500 x 1 x 1
    readout fully connected ``num_classes`` (logits)         num_classes
    ====== ================================================ ===============

    107,061,896 parameters in the locally connected layers (weights and per-position biases).
    Taken from the public code (``all_tnn/models/tnn.py``, ``models/layers/local.py``,
    ``model_helper/model_helper_functions.py``, ``defaults/hparams_defaults.py``): the six layers'
    filters, kernel sizes and strides; Keras ``LocallyConnected2D`` defaults, i.e. valid padding
    and one bias per filter and position; ReLU after each layer and no normalisation (the defaults
    ``activation="relu"``, ``norm_type="no_norm"``); ``MaxPool2D()`` (2x2, stride 2) after layers
    1, 3 and 5; a flattening dense readout; 150x150 inputs; the spatial loss summed over the six
    layers with one factor per layer (``layer_alpha_factors``, default 1), circular and with 4
    neighbours by default (:meth:`spatial_loss`). Chosen here: the initialisation is
    ``nn.Conv2d``'s per position (the code's default is Glorot-uniform); the readout returns
    logits (the code's softmax belongs to the loss); the readout flattens in PyTorch's
    ``(C, H, W)`` order, which at 150x150 (a 1x1 grid) is Keras' order too. The code's L2 weight
    penalty (1e-6), dropout and the ReLU it applies to the (never negative) spatial loss are left
    to the training script.

    Args:
        num_classes: outputs of the readout.
        input_size: height and width of the (square) input, at least 148 (smaller inputs leave
            layer 6 no room). Default: 150.
        device, dtype: factory arguments for all parameters (``device="meta"`` builds it for free).

    Attributes:
        layers: the six ``LocallyConnected2d`` (an ``nn.ModuleList``), in order.
        readout: the ``nn.Linear`` readout.

    Shape:
        ``(N, 3, input_size, input_size)`` -> ``(N, num_classes)`` logits.

    Example (on the meta device: no memory, no computation)::

        >>> import torch, unshared
        >>> net = unshared.models.AllTNN(565, device="meta")
        >>> sum(p.numel() for layer in net.layers for p in layer.parameters())
        107061896
        >>> [layer.output_size[0] for layer in net.layers]
        [48, 22, 20, 8, 6, 1]
        >>> net(torch.empty(2, 3, 150, 150, device="meta")).shape
        torch.Size([2, 565])
    """

    #: (in_channels, out_channels, kernel_size, stride) of the six layers, and the layers a pool follows.
    LAYERS = ((3, 64, 7, 3), (64, 81, 3, 1), (81, 81, 3, 1), (81, 256, 3, 1), (256, 256, 3, 1), (256, 2500, 3, 1))
    POOLED_AFTER = (0, 2, 4)

    def __init__(self, num_classes: int, input_size: int = 150, *, device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 148:
            raise ValueError(f"AllTNN: input_size must be an int >= 148 (the six valid-padded layers and three "
                             f"pools need it), got input_size={input_size!r}")
        layers, size = [], input_size
        for index, (cin, cout, kernel, stride) in enumerate(self.LAYERS):
            layer = LocallyConnected2d(cin, cout, kernel, stride=stride, input_size=size, **kw)
            layers.append(layer)
            size = layer.output_size[0] // 2 if index in self.POOLED_AFTER else layer.output_size[0]
        self.layers = nn.ModuleList(layers)
        self.readout = nn.Linear(self.LAYERS[-1][1] * size * size, num_classes, **kw)

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = F.relu(layer(x))
            if index in self.POOLED_AFTER:
                x = F.max_pool2d(x, 2)
        return self.readout(x.flatten(-3))

    def spatial_loss(self, alpha: float, layer_factors=None, *, circular: bool = True, neighbours: int = 4) -> Tensor:
        """All-TNN's spatial loss: ``sum_l alpha * layer_factors[l] * smoothness_loss(layers[l])``
        (:func:`unshared.topography.smoothness_loss`); layers with factor 0 are not computed.

        Args:
            alpha: the loss's weight (the code's ``alpha``).
            layer_factors: six numbers (the code's ``layer_alpha_factors``). Default: all 1.
            circular, neighbours: as for :func:`~unshared.topography.smoothness_loss`.
        """
        factors = [1.0] * len(self.layers) if layer_factors is None else list(layer_factors)
        if len(factors) != len(self.layers):
            raise ValueError(f"AllTNN.spatial_loss: layer_factors must hold {len(self.layers)} numbers, one per "
                             f"locally connected layer, got {len(factors)}: {layer_factors!r}")
        total = self.layers[0].weight.new_zeros(())
        for layer, factor in zip(self.layers, factors):
            if factor:
                total = total + alpha * factor * smoothness_loss(layer, circular=circular, neighbours=neighbours)
        return total
