"""The benchmark cases, named once for every benchmark (``bench.py`` on the CPU or CUDA,
``gpu_check.py``): layer shapes in 1, 2 or 3 spatial dimensions at a batch size, their work
(flops) and the fewest bytes a step must move.

- DeepFace L4-L6 (Taigman et al. 2014) and a CIFAR-like layer, the shapes the kernels were tuned on;
- the workloads that keep locally connected layers in use today: genomic prediction from long
  1d sequences (``genomics-1d``, ``genomics-1d-wide``: Pook et al. 2020, deepGBLUP), the first
  layer of a topographic vision model (``alltnn-1``: All-TNN, Lu et al. 2025), a locally connected
  ResNet stage (``lc-resnet``: Pogodin et al. 2021) and a channel-rich small grid (``wide``);
  on the CPU at one batch each, on a GPU at batch 32 and 256;
- ``tiny``, a smoke case fast enough for Triton's interpreter.

A case's key is ``<shape>-<batch>`` (``L4-64``, ``genomics-1d-32``), or ``tiny``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

MODES = ("forward", "forward+backward")
MiB = 1 << 20
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


@dataclass(frozen=True)
class Shape:
    """A locally connected layer without its batch: zero padding ``padding`` on both sides,
    dilation 1, one group, no bias; sizes per spatial dimension."""
    name: str
    in_channels: int
    input_size: tuple[int, ...]
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]

    @property
    def nd(self) -> int:
        return len(self.input_size)

    @property
    def output_size(self) -> tuple[int, ...]:
        return tuple((i + 2 * p - k) // s + 1
                     for i, k, s, p in zip(self.input_size, self.kernel_size, self.stride, self.padding))


def shape(name: str, in_channels: int, input_size, out_channels: int, kernel: int, stride: int = 1,
          padding: int = 0) -> Shape:
    """A :class:`Shape` with the same kernel, stride and padding along every dimension."""
    size = tuple(input_size) if isinstance(input_size, tuple) else (input_size,)
    nd = len(size)
    return Shape(name, in_channels, size, out_channels, (kernel,) * nd, (stride,) * nd, (padding,) * nd)


@dataclass(frozen=True)
class Case(Shape):
    """A :class:`Shape` at a batch size (``batch`` samples)."""
    batch: int

    @classmethod
    def of(cls, shape: Shape, batch: int) -> "Case":
        return cls(**dataclasses.asdict(shape), batch=batch)

    @property
    def positions(self) -> int:
        return math.prod(self.output_size)

    @property
    def weight_numel(self) -> int:
        return self.positions * self.out_channels * self.in_channels * math.prod(self.kernel_size)

    @property
    def input_numel(self) -> int:
        return self.batch * self.in_channels * math.prod(self.input_size)

    @property
    def output_numel(self) -> int:
        return self.batch * self.out_channels * self.positions

    def flops(self, mode: str) -> int:
        forward = 2 * self.batch * self.positions * self.out_channels * self.in_channels * math.prod(self.kernel_size)
        return forward if mode == "forward" else 3 * forward

    def bytes_moved(self, mode: str, itemsize: int = 4) -> int:
        """The fewest bytes a step must move, ``itemsize`` bytes per element. Forward: the input
        and the weight read, the output written. A training step (forward+backward): the weight
        read twice (forward and input gradient) and its gradient written once; the input, the
        output, the output gradient and the input gradient once each."""
        weight, activations = self.weight_numel, self.input_numel + self.output_numel
        if mode == "forward":
            return itemsize * (activations + weight)
        return itemsize * (2 * activations + 3 * weight)

    def describe(self) -> str:
        def dims(sizes):
            return "x".join(map(str, sizes))

        def per_dim(sizes):  # one number when every dimension has it
            return str(sizes[0]) if len(set(sizes)) == 1 else dims(sizes)
        pad = f" p{per_dim(self.padding)}" if any(self.padding) else ""
        return (f"{self.name}: {self.in_channels}ch {dims(self.input_size)} -> {self.out_channels}ch "
                f"{dims(self.output_size)}, k{per_dim(self.kernel_size)} s{per_dim(self.stride)}{pad}")


DEEPFACE = {"L4": (63, 9, 1), "L5": (55, 7, 2), "L6": (25, 5, 1)}  # input size, kernel, stride
SHAPES = {
    **{layer: shape(f"DeepFace {layer}", 16, (size, size), 16, kernel, stride)
       for layer, (size, kernel, stride) in DEEPFACE.items()},
    "cifar": shape("CIFAR-like", 32, (16, 16), 64, 3, 1, 1),
    "genomics-1d": shape("genomics 1d", 1, 100_000, 1, 10),
    "genomics-1d-wide": shape("genomics 1d, wide", 4, 20_000, 8, 10),
    "alltnn-1": shape("All-TNN first layer", 3, (150, 150), 64, 7, 3),
    "lc-resnet": shape("LC-ResNet stage", 64, (56, 56), 64, 3, 1, 1),
    "wide": shape("wide", 256, (12, 12), 256, 3, 1, 1),
}
#: the workload shapes, at one batch on the CPU (the sizes the CPU issue measured) and at two on a GPU
WORKLOADS = ("genomics-1d", "genomics-1d-wide", "alltnn-1", "lc-resnet", "wide")
CPU_BATCHES = {"genomics-1d": 32, "genomics-1d-wide": 32, "alltnn-1": 16, "lc-resnet": 16, "wide": 64}
GPU_BATCHES = (32, 256)


def _cases(shapes, batches) -> dict[str, Case]:
    return {f"{name}-{batch}": Case.of(SHAPES[name], batch) for name in shapes for batch in batches}


CASES = {
    **_cases(DEEPFACE, (8, 64)),
    "cifar-128": Case.of(SHAPES["cifar"], 128),
    **{f"{name}-{batch}": Case.of(SHAPES[name], batch) for name, batch in CPU_BATCHES.items()},
    **_cases(DEEPFACE, GPU_BATCHES),
    **_cases(WORKLOADS, GPU_BATCHES),
    # a smoke test (fast enough for Triton's interpreter)
    "tiny": Case.of(shape("tiny", 2, (4, 4), 2, 3, 2, 1), 2),
}
CPU_WORKLOAD_CASES = tuple(f"{name}-{batch}" for name, batch in CPU_BATCHES.items())
GPU_WORKLOAD_CASES = tuple(f"{name}-{batch}" for name in WORKLOADS for batch in GPU_BATCHES)
