"""Bytes a rank sends, counted from the collectives it calls.

:class:`CollectiveCounter` is a ``TorchDispatchMode``: every ``c10d`` operator (what
``torch.distributed``'s functions, DDP's C++ reducer and FSDP2 call) and every functional
collective (what DTensor calls) passes through it. Each is charged the bytes this rank sends with
the bandwidth-optimal (ring) algorithm on a group of ``W`` ranks, for a tensor of ``n`` bytes:

============================  ==================  ===============================================
operation                     bytes sent          why
============================  ==================  ===============================================
all-reduce                    ``2 (W-1)/W n``     a reduce-scatter, then an all-gather
all-gather (``n``: the input)  ``(W-1) n``         this rank's piece goes to every other rank
reduce-scatter (``n``: input)  ``(W-1)/W n``       every other rank's piece of it leaves
send / receive                ``n`` / ``0``
broadcast, scatter            ``n`` / ``n (W-1)/W`` (root), ``0`` (others): only at set-up
============================  ==================  ===============================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributed import ProcessGroup
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["Collective", "CollectiveCounter", "position_parallel_sent"]


@dataclass
class Collective:
    """One call: its kind, the numel of the tensor it was charged for, the bytes sent."""

    kind: str
    numel: int
    sent: float


def _nbytes(t) -> int:
    if isinstance(t, (list, tuple)):
        return sum(_nbytes(u) for u in t)
    return t.numel() * t.element_size()


def _numel(t) -> int:
    return sum(_numel(u) for u in t) if isinstance(t, (list, tuple)) else t.numel()


def _group_size(group) -> int:
    if isinstance(group, int):
        return group
    if isinstance(group, torch.ScriptObject):            # how c10d operators receive a ProcessGroup
        group = ProcessGroup.unbox(group)
    return group.size()


def _charge(name: str, args) -> Collective | None:
    """The :class:`Collective` of operator ``name`` (``namespace::op``) called with ``args``."""
    ns, op = name.split("::", 1)
    op = op.split(".")[0]
    if ns == "c10d":
        if op == "allreduce_":
            w = _group_size(args[1])
            return Collective("all-reduce", _numel(args[0]), 2 * (w - 1) / w * _nbytes(args[0]))
        if op == "_allgather_base_":                       # (output, input, group, ...)
            return Collective("all-gather", _numel(args[1]), (_group_size(args[2]) - 1) * _nbytes(args[1]))
        if op == "_reduce_scatter_base_":                  # (output, input, group, ...)
            w = _group_size(args[2])
            return Collective("reduce-scatter", _numel(args[1]), (w - 1) / w * _nbytes(args[1]))
        if op == "send":
            return Collective("send", _numel(args[0]), _nbytes(args[0]))
        if op == "recv_":
            return Collective("receive", _numel(args[0]), 0)
        if op in ("broadcast_", "scatter_", "barrier", "monitored_barrier_"):
            return Collective(op.strip("_"), 0, 0)         # set-up and synchronisation only
        raise NotImplementedError(f"CollectiveCounter: no rule for {name}")
    if ns == "_c10d_functional":
        if op == "all_gather_into_tensor":                 # (input, group_size, group_name)
            return Collective("all-gather", args[0].numel(), (args[1] - 1) * _nbytes(args[0]))
        if op == "reduce_scatter_tensor":                  # (input, reduce_op, group_size, group_name)
            return Collective("reduce-scatter", args[0].numel(), (args[2] - 1) / args[2] * _nbytes(args[0]))
        if op in ("wait_tensor", "_wrap_tensor_autograd"):
            return None
        raise NotImplementedError(f"CollectiveCounter: no rule for {name}")
    return None


class CollectiveCounter(TorchDispatchMode):
    """Records every collective called while active in :attr:`calls`."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Collective] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if name.startswith(("c10d::", "_c10d_functional::")):
            charged = _charge(name, args)
            if charged is not None:
                self.calls.append(charged)
        return func(*args, **(kwargs or {}))

    def sent(self, kinds=None) -> float:
        """Bytes sent (by the calls of ``kinds``, by default all)."""
        return sum(c.sent for c in self.calls if kinds is None or c.kind in kinds)


def position_parallel_sent(layer, input_sharded: bool, output_sharded: bool, batch: int, world: int,
                           itemsize: int = 4, input_grad: bool = True) -> list[float]:
    """The bytes each of ``world`` ranks sends in a training step of ``layer`` (not yet
    distributed) under ``PositionParallel``, from its row plans: the halo rows (forward, when the
    input is sharded) and, when the input needs a gradient, their gradients (backward) and, for
    a replicated input, the gather of its gradient; when the output is replicated, its gather
    (DTensor's gathers send ``ceil(rows / world)`` rows to each other rank); a shared bias's
    gradient, all-reduced."""
    from unshared.distributed.rows import RowGeometry, padding_pairs, plan_rows

    pads = padding_pairs(layer.padding, layer.kernel_size, layer.dilation)
    g = RowGeometry(layer.input_size[0], layer.output_size[0], layer.kernel_size[0], layer.stride[0],
                    layer.dilation[0], pads[0], layer.padding_mode)
    in_row = itemsize * batch * layer.in_channels * math.prod(layer.input_size[1:])
    out_row = itemsize * batch * layer.out_channels * math.prod(layer.output_size[1:])
    sent = []
    for r in range(world):
        plan = plan_rows(g, world, r)
        halo = sum(len(rows) for _, rows in (plan.send if input_sharded else ()))
        gathered_in = 0 if input_sharded or not input_grad else (world - 1) * -(-g.size // world)
        gathered_out = 0 if output_sharded else (world - 1) * -(-g.out // world)
        back = sum(len(rows) for _, rows in plan.receive) if input_grad else 0
        bias = 2 * (world - 1) / world * layer.out_channels * itemsize if layer.shared_bias and layer.bias is not None else 0
        sent.append(in_row * (halo + gathered_in + back) + out_row * gathered_out + bias)
    return sent

