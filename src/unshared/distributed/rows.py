"""Which rows of the first spatial dimension each rank of a position-parallel layer computes, reads
and exchanges: pure arithmetic on the layer's public geometry, the same on every rank.

Rows are split as DTensor's ``Shard`` splits a dimension (``torch.chunk``): ``ceil(rows / world)``
per rank, the last ranks fewer (possibly none). A rank computes its chunk of output rows
``[a, b)``; those read the padded input rows ``[a * stride, (b - 1) * stride + dilation * (k - 1) + 1)``,
its *slab*. Every slab row is an input row (its own under ``Shard(2)``, or a neighbour's: the
halo), or a padding row: zero, or the input row that ``reflect``, ``replicate`` or ``circular``
padding copies there.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["shard_range", "padding_pairs", "RowGeometry", "Segment", "RowPlan", "plan_rows"]


def shard_range(size: int, world: int, rank: int) -> range:
    """The indices that rank ``rank`` of ``world`` holds when ``size`` indices are split as
    DTensor's ``Shard`` (``torch.chunk``) splits them."""
    chunk = -(-size // world)
    start = min(rank * chunk, size)
    return range(start, min(start + chunk, size))


def padding_pairs(padding, kernel_size, dilation) -> tuple[tuple[int, int], ...]:
    """A layer's public ``padding`` (ints, ``"valid"`` or ``"same"``) as ``(low, high)`` per
    spatial dimension; ``"same"`` puts the odd element on the high side, as ``nn.Conv2d``."""
    if padding == "valid":
        return tuple((0, 0) for _ in kernel_size)
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
        return tuple((t // 2, t - t // 2) for t in totals)
    return tuple((p, p) for p in padding)


@dataclass(frozen=True)
class RowGeometry:
    """The first spatial dimension of a layer: ``size`` input rows, ``out`` output rows."""

    size: int
    out: int
    kernel: int
    stride: int
    dilation: int
    pad: tuple[int, int]
    padding_mode: str

    def __post_init__(self) -> None:
        lo, hi = self.pad
        produced = (self.size + lo + hi - self.dilation * (self.kernel - 1) - 1) // self.stride + 1
        if produced != self.out:
            raise ValueError(f"rows: {self.size} input rows with padding {self.pad}, kernel {self.kernel}, "
                             f"stride {self.stride}, dilation {self.dilation} give {produced} output rows, "
                             f"not {self.out}")
        if self.padding_mode == "reflect" and max(lo, hi) >= self.size:
            raise ValueError(f"padding_mode='reflect' needs padding < input size, got padding {self.pad} "
                             f"for {self.size} input rows")
        if self.padding_mode == "circular" and max(lo, hi) > self.size:
            raise ValueError(f"padding_mode='circular' needs padding <= input size, got padding {self.pad} "
                             f"for {self.size} input rows")

    def source(self, padded_row: int) -> int | None:
        """The input row at ``padded_row`` of the padded input (``None``: a zero row)."""
        j, n = padded_row - self.pad[0], self.size
        if 0 <= j < n:
            return j
        if self.padding_mode == "zeros":
            return None
        if self.padding_mode == "reflect":
            return -j if j < 0 else 2 * (n - 1) - j
        if self.padding_mode == "replicate":
            return min(max(j, 0), n - 1)
        return j % n                                        # circular

    def slab(self, out_rows: range) -> tuple[int | None, ...]:
        """The input row (or ``None``) of every padded row that ``out_rows`` read, in order."""
        if not out_rows:
            return ()
        first = out_rows.start * self.stride
        last = (out_rows.stop - 1) * self.stride + self.dilation * (self.kernel - 1)
        return tuple(self.source(q) for q in range(first, last + 1))


@dataclass(frozen=True)
class Segment:
    """``length`` consecutive slab rows: rows ``start:start + length`` of this rank's own input
    rows (``source="owned"``), of the ``index``-th tensor received (``"received"``), or zeros."""

    source: str
    start: int
    length: int
    index: int = 0


@dataclass(frozen=True)
class RowPlan:
    """What rank ``rank`` computes and moves along the first spatial dimension.

    Attributes:
        out_rows: its output rows (the weight's rows, for a layer with a bank per position).
        owned: the input rows it holds when the input is ``Shard(2)``.
        receive: ``(peer, input rows)`` it reads from each other rank, peers in rank order.
        send: ``(peer, input rows)`` each other rank reads from it, peers in rank order.
        segments: its slab, as runs of owned rows, received rows and zero rows.
    """

    rank: int
    out_rows: range
    owned: range
    receive: tuple[tuple[int, tuple[int, ...]], ...]
    send: tuple[tuple[int, tuple[int, ...]], ...]
    segments: tuple[Segment, ...]

    @property
    def slab_rows(self) -> int:
        return sum(s.length for s in self.segments)


def _needed(geometry: RowGeometry, world: int, rank: int) -> dict[int, tuple[int, ...]]:
    """``{owner: sorted input rows}`` that ``rank`` reads from each other rank."""
    slab = geometry.slab(shard_range(geometry.out, world, rank))
    needed: dict[int, set[int]] = {}
    for peer in range(world):
        if peer != rank:
            owned = shard_range(geometry.size, world, peer)
            rows = {j for j in slab if j is not None and j in owned}
            if rows:
                needed[peer] = rows
    return {peer: tuple(sorted(rows)) for peer, rows in needed.items()}


def _segments(slab, owned: range, receive) -> tuple[Segment, ...]:
    place = {}                                         # input row -> (source, index, row in it)
    for index, (_, rows) in enumerate(receive):
        place.update({j: ("received", index, i) for i, j in enumerate(rows)})
    runs: list[list] = []                              # [source, index, start, length]
    for j in slab:
        source, index, row = ("zeros", 0, 0) if j is None else (
            ("owned", 0, j - owned.start) if j in owned else place[j])
        last = runs[-1] if runs else None
        if last and last[0] == source and last[1] == index and (source == "zeros" or row == last[2] + last[3]):
            last[3] += 1
        else:
            runs.append([source, index, row, 1])
    return tuple(Segment(source, start, length, index) for source, index, start, length in runs)


def plan_rows(geometry: RowGeometry, world: int, rank: int) -> RowPlan:
    """The :class:`RowPlan` of ``rank`` among ``world`` ranks."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a group of {world}")
    owned = shard_range(geometry.size, world, rank)
    receive = tuple(_needed(geometry, world, rank).items())
    send = tuple((peer, rows) for peer in range(world) if peer != rank
                 for owner, rows in _needed(geometry, world, peer).items() if owner == rank)
    segments = _segments(geometry.slab(shard_range(geometry.out, world, rank)), owned, receive)
    return RowPlan(rank, shard_range(geometry.out, world, rank), owned, receive, send, segments)
