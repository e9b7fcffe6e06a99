"""How the PyTorch backend splits a call into blocks: a pure function of sizes and a budget.

A block is a run of output rows (first output dimension) of a range of samples; its gathered
patches ``(rows * positions_per_row * groups, samples, kernel_volume * in_channels / groups)``
must fit the budget (elements). On a CPU the budget is cache-sized, so that a block's patches
are still in cache when the matmul reads them; on a GPU it is large, so that each block is one
big batched matmul (cuBLAS) and the per-block overhead vanishes.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .._utils import Geometry
from .settings import Settings

__all__ = ["Block", "block_plan", "default_block_elements", "budget"]

#: CPU: 8 MiB of float32 per patch block. Measured at DeepFace L4, batch 64, weight gradient, 2-core
#: CPU: 219 ms with 17 MiB blocks, 142 ms with 9 MiB, 194 ms with 4 MiB.
CPU_BLOCK_ELEMENTS = 1 << 21
#: GPU: 256 MiB of float32 per block: DeepFace L4 at batch 256 takes 15 blocks of 4 output rows.
GPU_BLOCK_ELEMENTS = 1 << 26


class Block(NamedTuple):
    row0: int
    row1: int
    position0: int
    position1: int
    batch0: int
    batch1: int


def default_block_elements(device_type: str) -> int:
    """The block budget (elements) for a device type: cache-sized on a CPU, large elsewhere."""
    return CPU_BLOCK_ELEMENTS if device_type == "cpu" else GPU_BLOCK_ELEMENTS


def budget(device_type: str, settings: Settings, input_grad: bool = False) -> int:
    """The budget for one operation: ``settings.block_elements`` (or the device's default), and
    for the input gradient on a CPU ``input_grad_block_factor`` times that (each block then costs
    one addition per kernel offset; a GPU's blocks are large enough already)."""
    elements = settings.block_elements or default_block_elements(device_type)
    return elements * settings.input_grad_block_factor if input_grad and device_type == "cpu" else elements


def block_plan(g: Geometry, n: int, elements: int) -> list[Block]:
    """Blocks covering ``n`` samples and every output row, each with a patch buffer of at most
    ``elements`` (or one output row of one sample when even that is larger). When a single row
    of all samples is too large, rows are split into batch slices, which come consecutively."""
    row_positions = math.prod(g.output_size[1:])
    per_sample_row = max(row_positions * g.in_channels * g.kernel_volume, 1)
    if per_sample_row * n <= elements:
        rows, batch = max(1, min(g.output_size[0], elements // (per_sample_row * max(n, 1)))), n
    else:
        chunks = -(-n // max(1, elements // per_sample_row))
        rows, batch = 1, -(-n // chunks)
    plan = []
    for r0 in range(0, g.output_size[0], rows):
        r1 = min(r0 + rows, g.output_size[0])
        for n0 in range(0, n, max(batch, 1)):
            plan.append(Block(r0, r1, r0 * row_positions, r1 * row_positions, n0, min(n0 + batch, n)))
    return plan

