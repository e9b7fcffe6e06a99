"""The workers of ``test_position_parallel.py``: ``python position_parallel_worker.py TASKS OUT_DIR``
with ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; ``TASKS`` is a comma-separated
list of ``grid``, ``errors``, ``chain``, ``checkpoint`` and ``mesh2d``. Each task saves what this
rank sees (local pieces, with the rows they cover) to ``OUT_DIR/{task}_rank{rank}.pt``; the test
process compares them with one process's results.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor.parallel import parallelize_module

import unshared

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from harness.collectives import CollectiveCounter  # noqa: E402
from position_parallel_cases import CASES, SEED, Chain, chain_batches, placement, train_chain  # noqa: E402
from unshared.distributed import PositionParallel  # noqa: E402
from workers import init_worker  # noqa: E402


def _local(t):
    return t.to_local() if isinstance(t, DTensor) else t


def _full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t


def _span(r: range) -> tuple[int, int]:
    return r.start, r.stop


def run_case(case, mesh, world: int) -> dict:
    layer = case.build(world)
    x, g = case.data(layer)
    parallelize_module(layer, mesh, PositionParallel(input_layouts=placement(case.layouts[0]),
                                                     output_layouts=placement(case.layouts[1]),
                                                     use_local_output=case.local_output))
    s = layer.position_parallel
    owned, rows = s.plan.owned, s.plan.out_rows
    x_layout = case.layouts[0]
    if case.variant == "dtensor_input":      # placed the other way: the layer redistributes it
        x_layout = "S" if x_layout == "R" else "R"
        xin = distribute_tensor(x, mesh, [placement(x_layout)]).requires_grad_()
    else:
        xin = x[:, :, owned.start:owned.stop] if x_layout == "S" else x
        if case.variant == "channels_last":
            xin = xin.contiguous(memory_format=torch.channels_last)
        xin = xin.detach().requires_grad_()
    y = layer(xin)
    out = _local(y)
    out.backward(g[:, :, rows.start:rows.stop] if case.layouts[1] == "S" else g)
    return {
        "out": out.detach(), "out_type": type(y).__name__,
        "out_placements": [str(p) for p in y.placements] if isinstance(y, DTensor) else None,
        "x_grad": _local(xin.grad), "x_layout": x_layout,
        "owned": _span(owned), "out_rows": _span(rows), "weight_rows": _span(s.weight_rows),
        "params": {n: {"placements": [str(q) for q in p.placements], "local_shape": tuple(p.to_local().shape),
                       "grad": p.grad.to_local()} for n, p in layer.named_parameters()},
    }


def grid(rank: int, world: int) -> dict:
    mesh = init_device_mesh("cpu", (world,))
    return {case.id: run_case(case, mesh, world) for case in CASES if world in case.worlds}


def _error(fn) -> str | None:
    try:
        fn()
    except (ValueError, TypeError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def errors(rank: int, world: int) -> dict:
    """The messages of what ``PositionParallel`` refuses (every rank refuses before communicating)."""
    mesh = init_device_mesh("cpu", (world,))
    square = init_device_mesh("cpu", (1, world), mesh_dim_names=("data", "position"))
    kw = {"padding": 1, "input_size": (6, 8)}
    sharded = PositionParallel(input_layouts=Shard(2), output_layouts=Shard(2))
    layer = parallelize_module(unshared.LocallyConnected2d(3, 4, 3, **kw), mesh, sharded)
    return {
        "region": _error(lambda: parallelize_module(unshared.RegionLocallyConnected2d(3, 4, 3, regions=(3, 2), **kw),
                                                    mesh, PositionParallel())),
        "tiled": _error(lambda: parallelize_module(unshared.TiledLocallyConnected2d(3, 4, 3, tile_size=2, **kw),
                                                   mesh, PositionParallel())),
        "twice": _error(lambda: parallelize_module(layer, mesh, PositionParallel())),
        "mesh2d": _error(lambda: parallelize_module(unshared.LocallyConnected2d(3, 4, 3, **kw), square, PositionParallel())),
        "whole_input": _error(lambda: layer(torch.randn(2, 3, 6, 8))),
        "channels": _error(lambda: layer(torch.randn(2, 4, 3, 8))),
        "unbatched": _error(lambda: layer(torch.randn(3, 3, 8))),
    }


def chain(rank: int, world: int) -> dict:
    mesh = init_device_mesh("cpu", (world,))
    result = {}
    for local_output in (True, False):
        torch.manual_seed(SEED)
        model = parallelize_module(Chain(), mesh, Chain.plan(local_output))
        local = {n: tuple(p.to_local().shape) for n, p in model.named_parameters() if isinstance(p, DTensor)}
        grads, params, outputs = train_chain(model, full=_full)
        result[local_output] = {"grads": grads, "params": params, "outputs": outputs, "local_shapes": local}
    return result


def checkpoint(rank: int, world: int) -> dict:
    """Save on this world the chain after training; load what one process saved (DCP, full)."""
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(SEED)
    model = parallelize_module(Chain(), mesh, Chain.plan())
    train_chain(model)
    dcp.save(model.state_dict(), checkpoint_id=Path("saved_on_world"))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    if rank == 0:
        torch.save({n: t.detach().clone() for n, t in full.items()}, "full_state_on_world.pt")
    result = {}
    x = chain_batches()[0][0]
    for source in ("dcp", "full"):
        torch.manual_seed(SEED + 7)                        # other weights, replaced by the loaded ones
        fresh = parallelize_module(Chain(), mesh, Chain.plan())
        if source == "dcp":
            state = fresh.state_dict()
            dcp.load(state, checkpoint_id=Path("saved_on_1"))   # into the DTensors, in place
        else:
            set_model_state_dict(fresh, torch.load("full_state_on_1.pt"),
                                 options=StateDictOptions(full_state_dict=True))
        with torch.no_grad():
            out = fresh(x)
        result[source] = {"out": out, "params": {n: _full(p).detach() for n, p in fresh.named_parameters()},
                          "dtensor": {n: isinstance(p, DTensor) for n, p in fresh.named_parameters()}}
    return result


def mesh2d(rank: int, world: int) -> dict:
    """DDP and FSDP2 over the data dimension of a (2 data x 2 position) mesh: each data rank
    trains on its half of the batches; returns local pieces with the rows they cover (DDP) or
    full tensors (FSDP2)."""
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("data", "position"))
    data = mesh["data"].get_local_rank()
    per_rank = len(chain_batches()[0][0]) // 2
    part = slice(data * per_rank, (data + 1) * per_rank)
    result = {"data": data, "position": mesh["position"].get_local_rank()}
    for engine in ("ddp", "fsdp"):
        torch.manual_seed(SEED)
        model = parallelize_module(Chain(), mesh["position"], Chain.plan())
        rows = {}
        for name in ("lc1", "lc2", "tiled"):
            layer = model.get_submodule(name)
            span = _span(layer.position_parallel.weight_rows)
            rows[f"{name}.weight"] = (0, *span)
            if not layer.shared_bias:
                rows[f"{name}.bias"] = (1, *span)
        if engine == "ddp":
            wrapped = DDP(model, device_mesh=mesh["data"])
            grads, params, outputs = train_chain(wrapped, part, full=_local)
            strip = lambda d: {n.removeprefix("module."): t for n, t in d.items()}   # noqa: E731
            grads, params = strip(grads), [strip(p) for p in params]
        else:
            for name in ("lc1", "lc2", "tiled"):
                fully_shard(model.get_submodule(name), mesh=mesh["data"])
            fully_shard(model, mesh=mesh["data"])
            grads, params, outputs = train_chain(model, part, full=_full)
            rows = {}
        result[engine] = {"grads": grads, "params": params, "outputs": outputs, "rows": rows}
    return result


def counter(rank: int, world: int) -> dict:
    """The bytes ``benchmarks/harness/collectives.py`` counts in one training step of the chain,
    position-parallel and under DDP."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    mesh = init_device_mesh("cpu", (world,))
    result = {}
    for engine in ("position", "ddp"):
        torch.manual_seed(SEED)
        model = Chain()
        model = parallelize_module(model, mesh, Chain.plan()) if engine == "position" else DDP(model)
        train_chain(model)                            # DDP builds its buckets in the first step
        with CollectiveCounter() as count:
            train_chain(model)
        result[engine] = {kind: sum(c.sent for c in count.calls if c.kind == kind)
                          for kind in {c.kind for c in count.calls}}
    return result


TASKS = {"counter": counter, "grid": grid, "errors": errors, "chain": chain, "checkpoint": checkpoint, "mesh2d": mesh2d}


def main(tasks: str, out: Path) -> None:
    rank, world = init_worker()
    try:
        for task in tasks.split(","):
            result = TASKS[task](rank, world)
            torch.save(result, out / f"{task}_rank{rank}.pt")
            dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
