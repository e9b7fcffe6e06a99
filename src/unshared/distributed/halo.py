"""The differentiable communication of a position-parallel layer: its input slab (own rows, the
halo rows of the neighbouring ranks, padding rows) and the gradient of a replicated shared bias.

The slab's backward is the exchange run backwards: the gradient of every halo row goes back to the
rank that holds the row and is summed into that rank's input gradient; nothing else moves.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .rows import RowPlan

__all__ = ["slab", "sum_gradient_over"]


def _exchange(sends, receives, group) -> None:
    """Point-to-point: ``sends`` and ``receives`` are ``(group rank, tensor)`` pairs; empty
    tensors are skipped on both sides (their shapes agree on every rank)."""
    ops = [dist.P2POp(dist.isend, t, group=group, group_peer=peer) for peer, t in sends if t.numel()]
    ops += [dist.P2POp(dist.irecv, t, group=group, group_peer=peer) for peer, t in receives if t.numel()]
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()


def _rows(t: Tensor, rows, offset: int = 0) -> Tensor:
    """Rows ``rows`` (minus ``offset``) of dimension 2, as a new contiguous tensor."""
    return t.index_select(2, torch.tensor([j - offset for j in rows], dtype=torch.long, device=t.device))


def _with_rows(t: Tensor, rows: int) -> tuple[int, ...]:
    return (*t.shape[:2], rows, *t.shape[3:])


class _Slab(torch.autograd.Function):
    @staticmethod
    def forward(ctx, owned: Tensor, full: Tensor | None, plan: RowPlan, group) -> Tensor:
        ctx.plan, ctx.group, ctx.owned_shape = plan, group, owned.shape
        if full is not None:            # every rank holds every row: the halo is read, not received
            received = [_rows(full, rows) for _, rows in plan.receive]
        else:
            received = [owned.new_empty(_with_rows(owned, len(rows))) for _, rows in plan.receive]
            _exchange([(peer, _rows(owned, rows, plan.owned.start)) for peer, rows in plan.send],
                      [(peer, r) for (peer, _), r in zip(plan.receive, received)], group)
        pieces = []
        for s in plan.segments:
            if s.source == "zeros":
                pieces.append(owned.new_zeros(_with_rows(owned, s.length)))
            else:
                pieces.append((owned if s.source == "owned" else received[s.index]).narrow(2, s.start, s.length))
        if not pieces:
            return owned.new_zeros(_with_rows(owned, 0))
        return pieces[0].clone() if len(pieces) == 1 else torch.cat(pieces, dim=2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        plan = ctx.plan
        grad_owned = grad.new_zeros(ctx.owned_shape)
        halo = [grad.new_zeros(_with_rows(grad, len(rows))) for _, rows in plan.receive]
        row = 0
        for s in plan.segments:
            piece = grad.narrow(2, row, s.length)
            if s.source == "owned":
                grad_owned.narrow(2, s.start, s.length).add_(piece)
            elif s.source == "received":
                halo[s.index].narrow(2, s.start, s.length).add_(piece)
            row += s.length
        returned = [grad.new_empty(_with_rows(grad, len(rows))) for _, rows in plan.send]
        _exchange([(peer, h) for (peer, _), h in zip(plan.receive, halo)],
                  [(peer, r) for (peer, _), r in zip(plan.send, returned)], ctx.group)
        for (_, rows), r in zip(plan.send, returned):
            index = torch.tensor([j - plan.owned.start for j in rows], dtype=torch.long, device=grad.device)
            grad_owned.index_add_(2, index, r)
        return grad_owned, None, None, None


def slab(owned: Tensor, plan: RowPlan, group, full: Tensor | None = None) -> Tensor:
    """The input rows this rank's output rows read, ``(N, C, plan.slab_rows, *rest)``.

    Args:
        owned: ``(N, C, len(plan.owned), *rest)``, this rank's rows of the input (``Shard(2)``).
        plan: this rank's :class:`~unshared.distributed.rows.RowPlan`.
        group: the process group of the mesh dimension the rows are split over.
        full: the whole input ``(N, C, rows, *rest)`` when every rank holds it (``Replicate()``):
            the halo rows are then read from it instead of received. Its gradient goes through
            ``owned`` (the caller gathers it), never through ``full``.
    """
    return _Slab.apply(owned, full.detach() if full is not None else None, plan, group)


class _SumGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, group) -> Tensor:
        ctx.group = group
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def sum_gradient_over(t: Tensor, group) -> Tensor:
    """``t`` unchanged; its gradient is summed over ``group`` (a replicated parameter that each
    rank applies to its own rows)."""
    return _SumGradient.apply(t, group)
