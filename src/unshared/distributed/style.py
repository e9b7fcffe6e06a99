"""``PositionParallel``: a locally connected layer split by output position over the ranks of a
1-d device mesh, the PyTorch way (a ``ParallelStyle`` for ``parallelize_module``).

Each rank holds the filter banks of its chunk of output rows (the first spatial dimension) and
computes those rows, with the layer's own functional form and backend, from the input rows their
windows read. Only activations move: the halo rows in the forward, their gradients in the
backward; the weight gradient stays where the weight is.
"""
from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle
from torch.distributed.tensor.placement_types import Placement
from torch.nn.parameter import UninitializedParameter

import unshared
from unshared import functional as UF

from .halo import slab, sum_gradient_over
from .rows import RowGeometry, RowPlan, padding_pairs, plan_rows, shard_range

__all__ = ["PositionParallel", "PositionSharding", "SUPPORTED_LAYERS"]

#: The layers ``PositionParallel`` splits (the partially shared ones where their banks split along rows).
SUPPORTED_LAYERS = tuple(getattr(unshared, f"{kind}LocallyConnected{nd}d")
                         for kind in ("", "Tiled", "Region") for nd in (1, 2, 3))

#: The first spatial dimension of an ``(N, C, *spatial)`` tensor: the dimension rows are split on.
ROWS = Shard(2)


@dataclass(frozen=True)
class PositionSharding:
    """How a position-parallel layer is split, on this rank (``layer.position_parallel``).

    Attributes:
        mesh: the 1-d device mesh the rows are split over.
        plan: this rank's rows (:class:`~unshared.distributed.rows.RowPlan`): ``plan.out_rows``
            are the output rows it computes, ``plan.receive`` the halo rows it reads from others.
        weight_rows: the rows of ``layer.weight`` (output rows, or bank rows) this rank holds.
        input_layout, output_layout, use_local_output: as :class:`PositionParallel`'s.
        padding: the padding of the call on the slab (none along the split dimension: the slab
            holds its padding rows); ``pre_pad``: ``F.pad``'s list when that padding is uneven.
        banks: the ``banks`` of the call on the slab (partially shared layers), else ``None``.
    """

    mesh: DeviceMesh
    plan: RowPlan
    weight_rows: range
    input_layout: Placement
    output_layout: Placement
    use_local_output: bool
    padding: tuple[int, ...]
    pre_pad: tuple[int, ...] | None
    banks: tuple[tuple[int, ...], ...] | None


def _layout(value, name: str) -> Placement:
    value = Replicate() if value is None else value
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if value != Replicate() and value != ROWS:
        raise ValueError(f"PositionParallel: {name} must be Replicate() or Shard(2) (the first spatial "
                         f"dimension of (N, C, *spatial)), got {name}={value!r}")
    return value


class PositionParallel(ParallelStyle):
    """Split a locally connected layer by output position over a 1-d device mesh.

    ``parallelize_module(model, mesh, {"local4": PositionParallel()})`` (on a 2-d mesh, one of its
    dimensions: ``mesh["position"]``). The layer keeps its class and parameter names; its
    parameters become DTensors: the weight ``Shard(0)`` (its first output dimension, split as
    DTensor splits: ``ceil(rows / world)`` per rank, the last ranks fewer), a per-position bias
    ``Shard(1)``, a shared bias ``Replicate()`` (its gradient summed over the ranks). Each rank
    computes its output rows with the layer's functional form and backend on its slab of the input.

    Keyword Args:
        input_layouts: ``Replicate()`` (every rank holds the input; each reads the rows its windows
            need; the input gradient is summed over the ranks) or ``Shard(2)`` (each rank holds its
            chunk of the first spatial dimension, as DTensor splits it; the halo rows are exchanged
            with the ranks that hold them). Default: ``Replicate()``.
        output_layouts: ``Replicate()`` (gathered) or ``Shard(2)`` (this rank's output rows: the
            next position-parallel layer takes them as ``input_layouts=Shard(2)``). Default: ``Replicate()``.
        use_local_output: return a plain tensor (the whole output, or this rank's rows), not a
            ``DTensor``. Default: True.

    Inputs may also be DTensors on the mesh (redistributed to ``input_layouts`` if placed otherwise).
    Unbatched inputs ``(C, *spatial)`` need ``Replicate()`` input and output.

    Example::

        >>> # xdoctest: +SKIP("distributed")
        >>> from torch.distributed.device_mesh import init_device_mesh
        >>> from torch.distributed.tensor import Shard
        >>> from torch.distributed.tensor.parallel import parallelize_module
        >>> from unshared.distributed import PositionParallel
        >>> mesh = init_device_mesh("cuda", (4,))
        >>> model = parallelize_module(model, mesh, {
        ...     "lc1": PositionParallel(output_layouts=Shard(2)),
        ...     "lc2": PositionParallel(input_layouts=Shard(2))})
    """

    def __init__(self, *, input_layouts: Placement | None = None, output_layouts: Placement | None = None,
                 use_local_output: bool = True) -> None:
        super().__init__()
        self.input_layouts = (_layout(input_layouts, "input_layouts"),)
        self.output_layouts = (_layout(output_layouts, "output_layouts"),)
        self.use_local_output = bool(use_local_output)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(input_layouts={self.input_layouts[0]!r}, "
                f"output_layouts={self.output_layouts[0]!r}, use_local_output={self.use_local_output})")

    def _partition(self, name: str, module: nn.Module, mesh: DeviceMesh) -> None:
        if name:                               # the layer's own parameters only
            return
        for key, param in list(module.named_parameters(recurse=False)):
            placement = Shard(0) if key == "weight" else Replicate() if param.dim() == 1 else Shard(1)
            # contiguous first: DTensor's local shards are contiguous, and so is its global stride then
            dt = distribute_tensor(param.detach().contiguous(), mesh, [placement], src_data_rank=self.src_data_rank)
            module.register_parameter(key, nn.Parameter(dt, requires_grad=param.requires_grad))

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        _check_layer(module, device_mesh)
        pads = padding_pairs(module.padding, module.kernel_size, module.dilation)
        geometry = RowGeometry(module.input_size[0], module.output_size[0], module.kernel_size[0],
                               module.stride[0], module.dilation[0], pads[0], module.padding_mode)
        world, rank = device_mesh.size(), device_mesh.get_local_rank()
        plan = plan_rows(geometry, world, rank)
        banks, weight_rows = _local_banks(module, world, rank)
        padding, pre_pad = _slab_padding(pads)
        distribute_module(module, device_mesh, self._partition)
        module.position_parallel = PositionSharding(device_mesh, plan, weight_rows, self.input_layouts[0],
                                                    self.output_layouts[0], self.use_local_output, padding,
                                                    pre_pad, banks)
        module.forward = types.MethodType(_forward, module)
        return module


def _check_layer(module: nn.Module, mesh: DeviceMesh) -> None:
    if not isinstance(module, SUPPORTED_LAYERS):
        names = ", ".join(c.__name__ for c in SUPPORTED_LAYERS)
        raise TypeError(f"PositionParallel: expected one of {names}, got {type(module).__name__}")
    name = type(module).__name__
    if isinstance(module.weight, UninitializedParameter):
        raise ValueError(f"PositionParallel: {name} is lazy and not initialised yet; run one forward first")
    if isinstance(module.weight, DTensor) or hasattr(module, "position_parallel"):
        raise ValueError(f"PositionParallel: this {name} is already distributed (its weight is a DTensor)")
    if not isinstance(mesh, DeviceMesh) or mesh.ndim != 1:
        raise ValueError(f"PositionParallel: expected a 1-d DeviceMesh (of a 2-d mesh, one dimension: "
                         f"mesh['name']), got {mesh!r}")


def _local_banks(module, world: int, rank: int):
    """The ``banks`` of this rank's call and the weight rows it holds; raises ``ValueError`` when
    a partially shared layer's banks do not split along rows as its output rows do."""
    rows, bank_rows = module.output_size[0], module.weight.shape[0]
    banks = getattr(module, "banks", None)
    if banks is None:
        return None, shard_range(rows, world, rank)
    for r in range(world):
        out, held = shard_range(rows, world, r), shard_range(bank_rows, world, r)
        used = sorted({banks[0][i] for i in out})
        if used != list(held):
            raise ValueError(
                f"PositionParallel: the filter banks of this {type(module).__name__} do not split along "
                f"rows over {world} ranks: rank {r} computes output rows {list(out)}, which use bank rows "
                f"{used}, but would hold bank rows {list(held)}; banks split when each rank's output rows "
                f"use its own bank rows (a tile or region per output row, or regions aligned with the ranks)")
    out, held = shard_range(rows, world, rank), shard_range(bank_rows, world, rank)
    return (tuple(banks[0][i] - held.start for i in out), *banks[1:]), held


def _slab_padding(pads) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """The padding of the call on the slab (none along rows) and, when the other dimensions pad
    unevenly (``"same"`` with an odd total), the ``F.pad`` list to apply first."""
    rest = pads[1:]
    if all(lo == hi for lo, hi in rest):
        return (0, *(lo for lo, _ in rest)), None
    return (0,) * len(pads), tuple(p for pair in reversed(rest) for p in pair) + (0, 0)


def _contiguous_stride(shape) -> tuple[int, ...]:
    stride, step = [], 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return tuple(reversed(stride))


def _check_input(layer, x: Tensor, sharding: PositionSharding, nd: int) -> None:
    name = f"{type(layer).__name__} (PositionParallel)"
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: input must be a Tensor, got {type(x).__name__}")
    if x.dim() != nd + 2:
        raise ValueError(f"{name}: expected a {nd + 2}-d (N, C, *spatial) input (unbatched inputs need "
                         f"Replicate() input and output), got input of shape {tuple(x.shape)}")
    rows = len(sharding.plan.owned) if sharding.input_layout == ROWS else layer.input_size[0]
    expected = (layer.in_channels, rows, *layer.input_size[1:])
    if tuple(x.shape[1:]) != expected:
        what = f"this rank's rows {sharding.plan.owned.start}:{sharding.plan.owned.stop} of" if \
            sharding.input_layout == ROWS else "the whole"
        raise ValueError(f"{name}: expected (N, C, *spatial) = (N, {', '.join(map(str, expected))}): {what} "
                         f"input of size {tuple(layer.input_size)}, got input of shape {tuple(x.shape)}")


def _forward(layer, input: Tensor):
    """The forward of a position-parallel layer (bound to it by :class:`PositionParallel`)."""
    s: PositionSharding = layer.position_parallel
    mesh, plan, nd = s.mesh, s.plan, len(layer.kernel_size)
    group = mesh.get_group()
    x = input
    if isinstance(x, DTensor):
        if tuple(x.placements) != (s.input_layout,):
            x = x.redistribute(mesh, (s.input_layout,))
        x = x.to_local()
    unbatched = (isinstance(x, Tensor) and x.dim() == nd + 1 and s.input_layout == Replicate()
                 and s.output_layout == Replicate())
    if unbatched:
        x = x.unsqueeze(0)
    _check_input(layer, x, s, nd)
    if s.input_layout == ROWS:
        window = slab(x, plan, group)
    else:   # this rank's rows as a Shard(2) DTensor: their gradients are gathered in the backward
        owned = DTensor.from_local(x, mesh, [Replicate()], run_check=False).redistribute(mesh, [ROWS]).to_local()
        window = slab(owned, plan, group, full=x)
    weight = layer.weight.to_local()
    bias = None if layer.bias is None else layer.bias.to_local()
    if bias is not None and layer.shared_bias:
        bias = sum_gradient_over(bias, group)
    batch, out_channels = x.shape[0], layer.out_channels
    if plan.out_rows:
        if s.pre_pad is not None:
            window = F.pad(window, s.pre_pad, mode="constant" if layer.padding_mode == "zeros" else layer.padding_mode)
        y = UF.locally_connected(window, weight, bias, layer.stride, s.padding, layer.dilation, layer.groups,
                                 padding_mode=layer.padding_mode, backend=layer.backend, banks=s.banks)
    else:   # no rows here: an empty output that still takes part in every backward exchange
        y = window.new_zeros(batch, out_channels, 0, *layer.output_size[1:]) + window.sum() + weight.sum()
        y = y if bias is None else y + bias.sum()
    if s.output_layout == ROWS and s.use_local_output:
        return y
    shape = (batch, out_channels, *layer.output_size)
    out = DTensor.from_local(y, mesh, [ROWS], run_check=False, shape=torch.Size(shape),
                             stride=_contiguous_stride(shape))
    if s.output_layout == Replicate():
        out = out.redistribute(mesh, [Replicate()])
    if s.use_local_output:
        # a copy, not DTensor's view of its local tensor: the next layer may work in place (ReLU)
        out = out.to_local().clone()
    return out.squeeze(0) if unbatched else out
