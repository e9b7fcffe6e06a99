"""The benchmark cases: layer shapes (DeepFace L4-L6, a CIFAR-like layer, a tiny smoke case),
their work (flops) and the fewest bytes they must move."""
from __future__ import annotations

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
class Case:
    name: str
    batch: int
    in_channels: int
    size: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def positions(self) -> int:
        return self.out_size ** 2

    @property
    def weight_numel(self) -> int:
        return self.positions * self.out_channels * self.in_channels * self.kernel ** 2

    def flops(self, mode: str) -> int:
        forward = 2 * self.batch * self.positions * self.out_channels * self.in_channels * self.kernel ** 2
        return forward if mode == "forward" else 3 * forward

    def bytes_moved(self, mode: str, itemsize: int = 4) -> int:
        """Bytes of every operand read or written once, ``itemsize`` bytes per element: input,
        weight, output (and, for forward+backward, grad_output, grad_input and grad_weight too)."""
        x = self.batch * self.in_channels * self.size ** 2
        y = self.batch * self.out_channels * self.positions
        once = itemsize * (x + self.weight_numel + y)
        return once if mode == "forward" else 2 * once

    def describe(self) -> str:
        pad = f" p{self.padding}" if self.padding else ""
        return (f"{self.name}: {self.in_channels}ch {self.size}x{self.size} -> {self.out_channels}ch "
                f"{self.out_size}x{self.out_size}, k{self.kernel} s{self.stride}{pad}")


def _deepface(layer, batch, size, kernel, stride):
    return Case(f"DeepFace {layer}", batch, 16, size, 16, kernel, stride)


DEEPFACE = {"L4": (63, 9, 1), "L5": (55, 7, 2), "L6": (25, 5, 1)}  # input size, kernel, stride
CASES = {
    **{f"{layer}-{batch}": _deepface(layer, batch, *shape) for layer, shape in DEEPFACE.items()
       for batch in (8, 64)},
    "cifar-128": Case("CIFAR-like", 128, 32, 16, 64, 3, 1, 1),
    **{f"{layer}-{batch}": _deepface(layer, batch, *shape) for layer, shape in DEEPFACE.items()
       for batch in (32, 256)},
    "tiny": Case("tiny", 2, 2, 4, 2, 3, 2, 1),  # a smoke test (fast enough for Triton's interpreter)
}


