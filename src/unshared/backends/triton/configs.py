"""Launch parameters of the Triton kernels, as plain data (importing this imports no Triton).

Per operation, the candidate configurations that the launcher measures once per key on a GPU
(:mod:`.tuning`): a kernel of :mod:`.kernels` in one of its two families (tensor-core or
channel-poor), its block sizes, warps and pipeline stages. The one place that reads
``TRITON_INTERPRET``: :func:`interpreting` reads it once, at the first use of the Triton backend
(Triton itself decides when the kernels are defined, at their import).
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """One configuration of one kernel: ``blocks`` are its ``BLOCK_*`` constexprs, ``small`` its
    ``SMALL`` one (the channel-poor CUDA-core family, else the tensor-core one)."""
    kernel: str
    blocks: tuple[tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 3
    small: bool = False

    def __str__(self) -> str:
        blocks = ", ".join(f"{name.removeprefix('BLOCK_')}={value}" for name, value in self.blocks)
        family = "SMALL, " if self.small else ""
        return f"{self.kernel}({family}{blocks}, warps={self.num_warps}, stages={self.num_stages})"

    @property
    def block(self) -> dict[str, int]:
        return dict(self.blocks)


def _tiles(kernel: str, names: tuple[str, ...], rows) -> tuple[Candidate, ...]:
    return tuple(Candidate(kernel, tuple(zip(names, row[:-2])), row[-2], row[-1]) for row in rows)


#: Tensor-core candidates, ``(BLOCK_P, BLOCK_N, BLOCK_O, BLOCK_R, warps, stages)`` (input gradient:
#: ``(BLOCK_P, BLOCK_N, BLOCK_R, BLOCK_C, ...)``). BLOCK_P positions per program share their input
#: windows through L1; one position is a 2-d product (wgmma on sm_90, M = the batch tile, or the
#: reduction tile of the transposed weight gradient), several a batched one (mma.sync), whose
#: gathers take a pointer per element of the (BLOCK_P, BLOCK_N, BLOCK_R) tile: at most 16 of
#: them per thread, and two pipeline stages, or ptxas spills (tests/test_triton_compile.py,
#: UNSHARED_FULL_COMPILE=1).
FORWARD = _tiles("forward_kernel", ("BLOCK_P", "BLOCK_N", "BLOCK_O", "BLOCK_R"), (
    (1, 64, 16, 32, 4, 3), (1, 128, 16, 32, 8, 3), (2, 64, 16, 32, 8, 2), (2, 32, 16, 32, 4, 2),
    (1, 64, 64, 32, 8, 3), (1, 16, 16, 64, 4, 3), (4, 16, 16, 32, 4, 2)))
INPUT_GRAD = _tiles("input_grad_kernel", ("BLOCK_P", "BLOCK_N", "BLOCK_R", "BLOCK_C"), (
    (1, 64, 32, 16, 4, 3), (1, 128, 32, 16, 8, 3), (2, 32, 32, 16, 4, 2), (2, 64, 16, 16, 8, 2),
    (4, 16, 16, 16, 4, 2), (1, 64, 32, 64, 8, 3), (1, 16, 64, 16, 4, 3), (4, 16, 32, 16, 8, 2)))
WEIGHT_GRAD = _tiles("weight_grad_kernel", ("BLOCK_P", "BLOCK_N", "BLOCK_O", "BLOCK_R"), (
    (1, 32, 16, 64, 4, 3), (1, 64, 16, 64, 8, 3), (1, 32, 16, 128, 8, 3), (2, 32, 16, 64, 8, 2),
    (2, 16, 16, 64, 4, 2), (4, 16, 16, 32, 4, 2)))
TENSOR_CORE = {"forward": FORWARD, "input_grad": INPUT_GRAD, "weight_grad": WEIGHT_GRAD}

#: The channel dimension that decides a channel-poor layer: the products' narrow side.
NARROW = {"forward": "Og", "input_grad": "Cg", "weight_grad": "Og"}
#: At most this many channels on the narrow side: the CUDA-core kernels are candidates (and the
#: default when nothing is measured); tensor cores would pad the side to 16.
SMALL_CHANNELS = 8
#: Sums each thread of a channel-poor kernel keeps (4 warps): the tile is sized to this.
SMALL_SUMS = 4096


def pow2(value: int) -> int:
    """The next power of two (at least 1)."""
    return 1 << max(0, (int(value) - 1).bit_length())


bucket = pow2  # the autotuning bucket of a size


def small_candidates(op: str, narrow: int, reduction: int) -> tuple[Candidate, ...]:
    """Channel-poor candidates for a narrow side of ``narrow`` channels (``reduction``: the
    weight gradient's reduction length, its other tile side). The block the family walks one
    element at a time (the weight gradient's samples, the others' reduction) is 1."""
    width = pow2(min(narrow, SMALL_CHANNELS))
    if op == "weight_grad":
        rows = pow2(min(reduction, 32))
        tile = min(128, SMALL_SUMS // (rows * width))  # the second candidate halves it, even where 128 caps it
        return tuple(Candidate("weight_grad_kernel", (("BLOCK_P", max(1, tile // f)), ("BLOCK_N", 1),
                                                      ("BLOCK_O", width), ("BLOCK_R", rows)), 4, 1, small=True)
                     for f in (1, 2))
    inner = (("BLOCK_O", width), ("BLOCK_R", 1)) if op == "forward" else (("BLOCK_R", 1), ("BLOCK_C", width))
    return tuple(Candidate(f"{op}_kernel", (("BLOCK_P", max(1, min(256, SMALL_SUMS // (samples * width)))),
                                            ("BLOCK_N", samples), *inner), 4, 1, small=True) for samples in (32, 16))


def candidates(op: str, narrow: int, reduction: int) -> tuple[Candidate, ...]:
    """What the launcher may use for ``op``, the default (used unmeasured) first: channel-poor
    layers get the CUDA-core kernels first, the others the tensor-core ones only."""
    if narrow <= SMALL_CHANNELS:
        return small_candidates(op, narrow, reduction) + TENSOR_CORE[op]
    return TENSOR_CORE[op]


#: The configurations used under the interpreter (no timing there): small tiles that still cross
#: every block edge of the test shapes; BLOCK_P = 2 runs the batched product, 1 the 2-d one.
INTERPRETER = {
    "forward": Candidate("forward_kernel", (("BLOCK_P", 2), ("BLOCK_N", 16), ("BLOCK_O", 16), ("BLOCK_R", 32)), 4, 2),
    "input_grad": Candidate("input_grad_kernel", (("BLOCK_P", 2), ("BLOCK_N", 16), ("BLOCK_R", 32), ("BLOCK_C", 16)), 4, 2),
    "weight_grad": Candidate("weight_grad_kernel", (("BLOCK_P", 2), ("BLOCK_N", 16), ("BLOCK_O", 16), ("BLOCK_R", 32)), 4, 2),
}

#: CUDA's grid limits: the programs go on a 2-d grid, x up to 2^31 - 1, y up to 65535.
MAX_GRID_X = 2**31 - 1
MAX_GRID_Y = 65535


_interpreting: list[bool] = []  # the answer, once read (a plain global: Dynamo warns on functools.cache)


def interpreting() -> bool:
    """Whether the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``: on CPU tensors)."""
    if not _interpreting:
        _interpreting.append(os.environ.get("TRITON_INTERPRET") == "1")
    return _interpreting[0]


def grid(programs: int) -> tuple[int, int]:
    """The 2-d launch grid that covers ``programs`` programs (the kernels skip the excess)."""
    x = max(1, min(programs, MAX_GRID_X))
    return x, -(-programs // x)
