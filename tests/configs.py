"""Random layer configurations for the property tests (hypothesis strategies)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from unshared._utils import empty_weight

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


@dataclass
class Config:
    nd: int
    in_channels: int
    out_channels: int
    kernel_size: tuple
    stride: tuple
    padding: object
    dilation: tuple
    groups: int
    padding_mode: str
    input_size: tuple
    batch: int | None  # None: unbatched
    bias: str | None   # "position", "shared" or None
    layout: str        # "contiguous", "noncontiguous", "channels_last"
    kernel_major: bool = False  # the weight's layout: kernel-major (the modules' default) or contiguous

    @property
    def pads(self):
        if self.padding == "valid":
            return [(0, 0)] * self.nd
        if self.padding == "same":
            return [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2)
                    for k, d in zip(self.kernel_size, self.dilation)]
        p = (self.padding,) * self.nd if isinstance(self.padding, int) else self.padding
        return [(q, q) for q in p]

    @property
    def output_size(self):
        return tuple((i + lo + hi - d * (k - 1) - 1) // s + 1 for i, (lo, hi), d, k, s in
                     zip(self.input_size, self.pads, self.dilation, self.kernel_size, self.stride))

    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups, padding_mode=self.padding_mode)

    def tensors(self, dtype=torch.float64, seed=0, requires_grad=False, device="cpu"):
        """``(x, weight, bias)`` with values of order one, in the configured layout."""
        gen = torch.Generator().manual_seed(seed)
        nd = self.nd
        w_shape = (*self.output_size, self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        fan_in = self.in_channels // self.groups * torch.Size(self.kernel_size).numel()
        w = torch.randn(w_shape, generator=gen, dtype=torch.float64) / fan_in ** 0.5
        b = None
        if self.bias == "position":
            b = torch.randn(self.out_channels, *self.output_size, generator=gen, dtype=torch.float64)
        elif self.bias == "shared":
            b = torch.randn(self.out_channels, generator=gen, dtype=torch.float64)
        lead = () if self.batch is None else (self.batch,)
        shape = (*lead, self.in_channels, *self.input_size)
        if self.layout == "noncontiguous":  # every other element of the last spatial dimension
            x = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen, dtype=torch.float64)
            x = x.to(device, dtype)[..., ::2]  # (a dtype conversion of the slice would make it contiguous)
            assert x.numel() == 0 or x.shape[-1] == 1 or not x.is_contiguous()
        else:
            x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype)
        w = empty_weight(w.shape, nd, kernel_major=self.kernel_major, dtype=dtype, device=device).copy_(w)
        b = None if b is None else b.to(device, dtype)
        if self.layout == "channels_last" and x.dim() in (4, 5):
            fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
            x = x.contiguous(memory_format=fmt)
        assert x.dim() == nd + len(lead) + 1
        for t in (x, w, b):
            if t is not None:
                t.requires_grad_(requires_grad)
        return x, w, b


@st.composite
def configs(draw, nds=(1, 2, 3), max_batch=3, layouts=("contiguous", "noncontiguous", "channels_last"),
            tiny: bool = False):
    """Random configurations; ``tiny`` keeps every size at the 3d limits (few output positions),
    for the slow Triton interpreter."""
    nd = draw(st.sampled_from(nds))
    small = nd == 3 or tiny
    groups = draw(st.integers(1, 2 if tiny else 3))
    in_channels = groups * draw(st.integers(1, 2 if small else 3))
    out_channels = groups * draw(st.integers(1, 2 if small else 3))
    kernel = tuple(draw(st.integers(1, 2 if small else 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 2 if small else 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding_mode = draw(st.sampled_from(PADDING_MODES))
    choices = ["int", "tuple", "valid"] + (["same"] if all(s == 1 for s in stride) else [])
    kind = draw(st.sampled_from(choices))
    if kind == "int":
        padding = draw(st.integers(0, 2))
    elif kind == "tuple":
        padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    else:
        padding = kind
    cfg = Config(nd, in_channels, out_channels, kernel, stride, padding, dilation, groups,
                 padding_mode, (1,) * nd, None, None, "contiguous")
    sizes = []
    for (lo, hi), k, d in zip(cfg.pads, kernel, dilation):
        need = max(1, d * (k - 1) + 1 - lo - hi)
        if padding_mode == "reflect":
            need = max(need, lo + 1, hi + 1)
        elif padding_mode == "circular":
            need = max(need, lo, hi)
        sizes.append(draw(st.integers(need, need + (2 if small else 4))))
    cfg.input_size = tuple(sizes)
    cfg.batch = draw(st.one_of(st.none(), st.integers(0, max_batch)))
    cfg.bias = draw(st.sampled_from(["position", "shared", None]))
    cfg.layout = draw(st.sampled_from(layouts))
    cfg.kernel_major = draw(st.booleans())
    return cfg
