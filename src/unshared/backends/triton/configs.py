"""Launch parameters of the Triton kernels, as plain data (importing this imports no Triton).

The one place that reads ``TRITON_INTERPRET``: :func:`interpreting` reads it once, at the first
use of the Triton backend (Triton itself decides when the kernels are defined, at their import).
"""
from __future__ import annotations

import functools
import os

#: Block sizes, ``(BLOCK_N, BLOCK_O, BLOCK_R, BLOCK_C, num_warps, num_stages)`` per kernel. BLOCK_N
#: tiles the batch; BLOCK_O output channels; BLOCK_R the reduction (kernel offsets x channels);
#: BLOCK_C input channels (input gradient). A batch tile of 64 or more (forward, input gradient)
#: or a reduction tile of 64 or more (weight gradient, computed transposed) is the matrix
#: product's M dimension, which lets sm_90 use wgmma; 16 serves small batches. Wide tiles take 8
#: warps: with 4, Triton 3.6 or 3.9 spills registers on them (tests/test_triton_compile.py).
FORWARD = ((16, 16, 64, 16, 4, 3), (32, 16, 64, 16, 4, 3), (64, 16, 32, 16, 4, 2), (128, 16, 16, 16, 4, 3),
           (64, 32, 32, 16, 8, 3), (64, 64, 32, 16, 8, 3))
INPUT_GRAD = ((32, 16, 16, 16, 4, 3), (32, 16, 16, 32, 4, 3), (64, 16, 16, 16, 4, 3), (128, 16, 16, 16, 8, 3),
              (64, 32, 16, 64, 8, 3))
WEIGHT_GRAD = ((16, 16, 64, 16, 4, 3), (32, 16, 64, 16, 4, 3), (32, 16, 128, 16, 4, 3), (64, 16, 64, 16, 8, 3),
               (64, 16, 64, 16, 8, 2), (32, 16, 128, 16, 8, 3))
CONFIGS = {"forward": FORWARD, "input_grad": INPUT_GRAD, "weight_grad": WEIGHT_GRAD}

#: The one configuration used under the interpreter, where autotuning cannot time anything.
INTERPRETER_BLOCKS = {"BLOCK_N": 16, "BLOCK_O": 16, "BLOCK_R": 32, "BLOCK_C": 16}

#: What selects a tuned configuration: the batch size and the positions bucketed to powers of two
#: (a last partial batch or an evaluation batch reuses the tuning of its bucket), the channel and
#: reduction sizes, banks, weight layout and precision; Triton adds the tensors' dtypes.
AUTOTUNE_KEY = ["N_BUCKET", "P_BUCKET", "Og", "Cg", "R", "G", "HAS_BANKS", "KERNEL_MAJOR", "PRECISION"]

#: CUDA's grid limits: the programs go on a 2-d grid, x up to 2^31 - 1, y up to 65535.
MAX_GRID_X = 2**31 - 1
MAX_GRID_Y = 65535


@functools.cache
def interpreting() -> bool:
    """Whether the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``: on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def bucket(value: int) -> int:
    """The next power of two (at least 1): the autotuning bucket of a size."""
    return 1 << max(0, (int(value) - 1).bit_length())


def grid(programs: int) -> tuple[int, int]:
    """The 2-d launch grid that covers ``programs`` programs (the kernels skip the excess)."""
    x = max(1, min(programs, MAX_GRID_X))
    return x, -(-programs // x)


def smallest_blocks(kernel: str) -> dict[str, int]:
    """The smallest tile of each kind among ``kernel``'s configurations (the most programs)."""
    names = ("BLOCK_N", "BLOCK_O", "BLOCK_R", "BLOCK_C")
    return {name: min(c[i] for c in CONFIGS[kernel]) for i, name in enumerate(names)}
