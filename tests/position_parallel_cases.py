"""What the position-parallel tests run (``test_position_parallel.py``) and their workers
(``position_parallel_worker.py``) both build: the option grid, the chained network, its training.

- the option grid (2 and 3 processes): 1d/2d/3d, stride, dilation, groups, every padding mode
  (reflect and circular at the ends, ``"same"`` with uneven padding), shared, per-position and no
  bias, tiled and region layers whose banks split along rows, every CPU backend, float64 and
  float32, each input/output layout, DTensor inputs and outputs, channels-last, unbatched and
  empty inputs, uneven splits and a rank without rows: the outputs, the input gradients and the
  weight and bias gradients each rank holds equal the matching parts of one process's;
- three chained layers passing ``Shard(2)`` rows between them, trained two steps (2 and 3 processes);
- checkpoints (2 processes): ``torch.distributed.checkpoint`` saved on 2 ranks loads in one
  process, saved in one process loads on 2; the full state dict gathered and loaded;
- a 2-d mesh (4 processes, data x position) with DDP and FSDP2 over the data dimension.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import unshared
from unshared.distributed import PositionParallel

SEED = 20261202
STEPS = 2
TOL = {"float64": {"rtol": 1e-10, "atol": 1e-12}, "float32": {"rtol": 2e-5, "atol": 2e-6}}


@dataclass(frozen=True)
class Case:
    """One layer configuration: ``unshared.<layer>(*args, **kw)``; ``kw`` values ``"world"`` are
    the world size; ``layouts``: input and output, ``R`` (Replicate) or ``S`` (Shard(2))."""

    layer: str
    args: tuple
    kw: tuple = ()
    layouts: str = "RR"
    dtype: str = "float64"
    backend: str = "auto"
    batch: int = 3
    local_output: bool = True
    variant: str = ""             # "channels_last", "unbatched" or "dtensor_input"
    worlds: tuple = (2, 3)        # the world sizes it runs on

    @property
    def id(self) -> str:
        kw = ",".join(f"{k}={v}" for k, v in self.kw)
        extra = [self.dtype, self.backend, f"N{self.batch}", self.variant, "" if self.local_output else "dtensor_output"]
        return f"{self.layer}({','.join(map(str, self.args))},{kw})-{self.layouts}-" + "-".join(e for e in extra if e)

    def build(self, world: int, backend: str | None = None) -> nn.Module:
        """The layer for ``world`` ranks (with ``backend``, by default the case's)."""
        torch.manual_seed(SEED)
        kw = {k: world if v == "world" else v for k, v in self.kw}
        kw = {k: tuple(world if u == "world" else u for u in v) if isinstance(v, tuple) else v for k, v in kw.items()}
        return getattr(unshared, self.layer)(*self.args, dtype=getattr(torch, self.dtype),
                                            backend=backend or self.backend, **kw)

    def data(self, layer):
        g = torch.Generator().manual_seed(SEED + 1)
        dtype = getattr(torch, self.dtype)
        shape = (layer.in_channels, *layer.input_size)
        x = torch.randn(*((self.batch,) if self.variant != "unbatched" else ()), *shape, generator=g, dtype=dtype)
        out = (layer.out_channels, *layer.output_size)
        y = torch.randn(*((self.batch,) if self.variant != "unbatched" else ()), *out, generator=g, dtype=dtype)
        return x, y


def placement(code: str):
    """``"R"``: ``Replicate()``; ``"S"``: ``Shard(2)``."""
    from torch.distributed.tensor import Replicate, Shard
    return Replicate() if code == "R" else Shard(2)


_PLAIN = ("LocallyConnected2d", (3, 4, 3), (("padding", 1), ("input_size", (9, 7))))
_LAYERS = [
    # stride, padding, dilation, groups, reflect at the ends, shared bias
    ("LocallyConnected2d", (4, 6, 3, 2, 2, 2, 2), (("padding_mode", "reflect"), ("shared_bias", True),
                                                    ("input_size", (11, 6)))),
    ("LocallyConnected2d", (2, 3, (3, 2), 1, (2, 1)), (("bias", False), ("padding_mode", "replicate"),
                                                        ("input_size", (7, 5)))),
    # a 5-row window over 7 rows: on 3 ranks the last one reads rows of both others (wrapped)
    ("LocallyConnected2d", (2, 2, 5), (("padding", 2), ("padding_mode", "circular"), ("input_size", (7, 6)))),
    ("LocallyConnected2d", (3, 2, 4), (("padding", "same"), ("input_size", (8, 6)))),          # (1, 2) pads
    ("LocallyConnected2d", (2, 2, (2, 4)), (("padding", "same"), ("padding_mode", "reflect"), ("input_size", (6, 7)))),
    ("LocallyConnected1d", (2, 3, 4, 3, 1), (("padding_mode", "circular"), ("input_size", 13))),   # 4 rows: 2, 2, 0
    ("LocallyConnected1d", (3, 2, 3, 1, 2, 2), (("padding_mode", "reflect"), ("input_size", 9))),
    ("LocallyConnected3d", (4, 4, (3, 2, 2), (2, 1, 1), 1, 1, 2), (("shared_bias", True), ("input_size", (6, 4, 3)))),
    ("LocallyConnected3d", (2, 2, 2), (("padding", 1), ("padding_mode", "circular"), ("input_size", (5, 3, 2)))),
    ("TiledLocallyConnected2d", (3, 4, 3), (("padding", 1), ("input_size", (6, 8)), ("tile_size", (6, 3)))),
    ("RegionLocallyConnected2d", (3, 4, 3), (("padding", 1), ("input_size", (6, 8)), ("regions", ("world", 2)))),
    ("TiledLocallyConnected1d", (2, 2, 3), (("input_size", 10), ("tile_size", 8))),     # a bank per position
    ("LocallyConnected2d", (2, 3, 3), (("input_size", (4, 5)),)),       # 2 output rows: one rank of 3 has none
]
_CYCLE = ("RS", "SS", "SR", "RR")
CASES = [Case(*_PLAIN, layouts=lay) for lay in ("RR", "RS", "SR", "SS")] + [
    Case(*spec, layouts=_CYCLE[i % 4]) for i, spec in enumerate(_LAYERS)] + [
    Case(*_PLAIN, layouts="SS", backend="torch"),
    Case(*_PLAIN, layouts="RS", backend="composite"),
    Case(*_PLAIN, layouts="SR", backend="triton", batch=2, worlds=(2,)),   # the Triton interpreter: slow
    Case(*_LAYERS[9], layouts="SS", backend="conv"),
    Case(*_LAYERS[9], layouts="RR", backend="torch"),
    Case(*_PLAIN, layouts="SS", dtype="float32"),
    Case(*_LAYERS[0], layouts="RS", dtype="float32"),
    Case(*_PLAIN, layouts="SS", local_output=False),
    Case(*_PLAIN, layouts="RR", local_output=False),
    Case(*_PLAIN, layouts="SR", variant="channels_last"),
    Case(*_PLAIN, layouts="RR", variant="unbatched"),
    Case(*_PLAIN, layouts="RS", variant="dtensor_input"),
    Case(*_LAYERS[0], layouts="SR", variant="dtensor_input"),
    Case(*_PLAIN, layouts="SS", batch=0),
]
WORLDS = (2, 3)
#: (world size, case) pairs
GRID = [(world, case) for world in WORLDS for case in CASES if world in case.worlds]


class Chain(nn.Module):
    """Three position-parallel layers passing ``Shard(2)`` rows between them, and a linear head."""

    def __init__(self, dtype=torch.float64) -> None:
        super().__init__()
        kw = {"dtype": dtype}
        self.lc1 = unshared.LocallyConnected2d(3, 4, 3, padding=1, input_size=(10, 6), **kw)
        self.lc2 = unshared.LocallyConnected2d(4, 4, 3, 2, 1, groups=2, padding_mode="reflect", shared_bias=True,
                                               input_size=(10, 6), **kw)                       # -> 5 x 3
        self.tiled = unshared.TiledLocallyConnected2d(4, 3, 2, padding="same", input_size=(5, 3),
                                                      tile_size=(5, 2), **kw)
        self.head = nn.Linear(3 * 5 * 3, 3, **kw)

    def forward(self, x):
        x = F.relu(self.lc1(x), inplace=True)             # in place, as DeepFace's ReLUs
        x = torch.tanh(self.lc2(x))
        return self.head(F.relu(self.tiled(x), inplace=True).flatten(1))

    @staticmethod
    def plan(local_output: bool = True) -> dict:
        from torch.distributed.tensor import Replicate, Shard
        return {"lc1": PositionParallel(output_layouts=Shard(2), use_local_output=local_output),
                "lc2": PositionParallel(input_layouts=Shard(2), output_layouts=Shard(2), use_local_output=local_output),
                "tiled": PositionParallel(input_layouts=Shard(2), output_layouts=Replicate())}


def chain_batches(batch: int = 4):
    g = torch.Generator().manual_seed(SEED + 2)
    return [(torch.randn(batch, 3, 10, 6, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (batch,), generator=g)) for _ in range(STEPS)]


def train_chain(model, part=slice(None), full=lambda t: t):
    """``STEPS`` SGD steps on ``part`` of each batch: (the first step's gradients, the parameters
    after each step, the outputs of each step), by name, through ``full``."""
    # the parameters as they are now: DDP over a sub-mesh swaps DTensor parameters for local ones,
    # which a module's forward then hides behind DTensor attributes (torch's TP + DDP recipe)
    named = list(model.named_parameters())
    opt = torch.optim.SGD([p for _, p in named], lr=0.5, momentum=0.9)
    grads, params, outputs = None, [], []
    for step, (x, y) in enumerate(chain_batches()):
        out = model(x[part])
        F.cross_entropy(out, y[part]).backward()
        outputs.append(out.detach().clone())
        if step == 0:
            grads = {n: full(p.grad).detach().clone() for n, p in named}
        opt.step()
        opt.zero_grad()
        params.append({n: full(p).detach().clone() for n, p in named})
    return grads, params, outputs

