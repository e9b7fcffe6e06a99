"""``unshared.distributed.PositionParallel``: locally connected layers split by output rows over
CPU processes (gloo), checked against one process on the same batch.

Workers (``position_parallel_worker.py``) start once per world size, 2, 3 and 4 processes, and
run every configuration of ``position_parallel_cases.py``; this process computes the one-process
references and compares what each rank holds with the matching part (float64 tight, float32
close): outputs, input gradients, weight and bias gradients, each rank's share of the weight,
parameters after training steps, checkpoints saved on N ranks and loaded on M. The row
arithmetic (``unshared.distributed.rows``) is checked here directly against the loop reference's
padding.
"""
from __future__ import annotations

import itertools
import math
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn

import unshared
from position_parallel_cases import GRID, SEED, TOL, WORLDS, Chain, chain_batches, train_chain
from reference import locally_connected_reference, pad_reference
from unshared.distributed import PositionParallel, shard_range
from unshared.distributed.rows import RowGeometry, padding_pairs, plan_rows
from workers import distributed_unavailable, fsdp2_available, run_workers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from harness.collectives import position_parallel_sent  # noqa: E402

WORKER = Path(__file__).resolve().parent / "position_parallel_worker.py"
_TIMEOUT = 300
_reason = distributed_unavailable()
needs_workers = pytest.mark.skipif(_reason is not None, reason=_reason or "")


# ---------------------------------------------------------------------------------- the row arithmetic

def test_shard_range_is_torch_chunk():
    for size, world in itertools.product(range(0, 12), range(1, 6)):
        chunks = [list(c) for c in torch.arange(size).chunk(world)] if size else []
        got = [list(shard_range(size, world, r)) for r in range(world)]
        assert got == chunks + [[]] * (world - len(chunks)), (size, world)


GEOMETRIES = [(size, k, s, d, pad, mode) for size, k, s, d, pad, mode in itertools.product(
    (1, 2, 5, 9), (1, 2, 3, 5), (1, 2, 3), (1, 2), ((0, 0), (1, 1), (2, 1), (0, 3)),
    ("zeros", "reflect", "replicate", "circular"))
    if size + sum(pad) >= d * (k - 1) + 1 and not (mode == "reflect" and max(pad) >= size)
    and not (mode == "circular" and max(pad) > size)]


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_row_plans_rebuild_the_padded_input(world):
    """Every rank's slab, rebuilt from its own rows, the rows it receives and zeros, is the rows
    of the reference's padded input its output rows read; what a rank receives is what its
    owner sends it."""
    for size, k, s, d, pad, mode in GEOMETRIES:
        out = (size + sum(pad) - d * (k - 1) - 1) // s + 1
        geometry = RowGeometry(size, out, k, s, d, pad, mode)
        x = torch.arange(1.0, size + 1).view(1, 1, size)
        padded = pad_reference(x, [pad], mode)[0, 0]
        plans = [plan_rows(geometry, world, r) for r in range(world)]
        for plan in plans:
            assert list(plan.out_rows) == list(shard_range(out, world, plan.rank))
            owned = x[0, 0, plan.owned.start:plan.owned.stop]
            received = [x[0, 0, list(rows)] for _, rows in plan.receive]
            assert all(set(rows) <= set(plans[p].owned) for p, rows in plan.receive)
            pieces = [torch.zeros(g.length) if g.source == "zeros" else
                      (owned if g.source == "owned" else received[g.index])[g.start:g.start + g.length]
                      for g in plan.segments]
            slab = torch.cat(pieces) if pieces else torch.zeros(0)
            first = plan.out_rows.start * s if plan.out_rows else 0
            expected = padded[first:first + plan.slab_rows]
            assert torch.equal(slab, expected), (size, k, s, d, pad, mode, world, plan.rank)
            if plan.out_rows:
                assert plan.slab_rows == (len(plan.out_rows) - 1) * s + d * (k - 1) + 1
            for peer, rows in plan.receive:
                assert (plan.rank, rows) in plans[peer].send
        assert sum(len(p.send) for p in plans) == sum(len(p.receive) for p in plans)


def test_padding_pairs_match_the_layers():
    for padding, kernel, dilation in [(1, (3, 3), (1, 1)), ("same", (4, 2), (1, 3)), ("valid", (3, 5), (2, 1))]:
        layer = unshared.LocallyConnected2d(2, 2, kernel, padding=padding, dilation=dilation, input_size=(9, 9))
        pads = padding_pairs(layer.padding, layer.kernel_size, layer.dilation)
        sizes = tuple((9 + lo + hi - d * (k - 1) - 1) + 1 for (lo, hi), k, d in zip(pads, kernel, dilation))
        assert sizes == layer.output_size, (padding, pads)


# ---------------------------------------------------------------------------------- refusals (no processes)

def test_refuses_other_layouts_and_layers():
    from torch.distributed.tensor import Replicate, Shard

    with pytest.raises(ValueError, match=r"input_layouts must be Replicate\(\) or Shard\(2\).*Shard\(dim=1\)"):
        PositionParallel(input_layouts=Shard(1))
    with pytest.raises(ValueError, match=r"output_layouts must be .*Shard\(dim=3\)"):
        PositionParallel(output_layouts=Shard(3))
    assert repr(PositionParallel(output_layouts=(Shard(2),))) == (
        "PositionParallel(input_layouts=Replicate(), output_layouts=Shard(dim=2), use_local_output=True)")
    style = PositionParallel(input_layouts=Replicate())
    for layer in (nn.Conv2d(2, 2, 3), unshared.LowRankLocallyConnected2d(2, 2, 3, input_size=5, rank=2),
                  unshared.LocallyConnectedTranspose2d(2, 2, 3, input_size=5)):
        with pytest.raises(TypeError, match=f"expected one of LocallyConnected1d.*got {type(layer).__name__}"):
            style._apply(layer, None)
    with pytest.raises(ValueError, match="LazyLocallyConnected2d is lazy and not initialised yet"):
        style._apply(unshared.LazyLocallyConnected2d(2, 3), None)
    with pytest.raises(ValueError, match="expected a 1-d DeviceMesh.*got None"):
        style._apply(unshared.LocallyConnected2d(2, 2, 3, input_size=5), None)


# ---------------------------------------------------------------------------------- the workers

def _one_process_checkpoints(directory: Path) -> None:
    """What the 1 -> 2 checkpoint checks load: a DCP checkpoint and a full state dict, saved here."""
    torch.manual_seed(SEED + 3)
    dcp.save(Chain().state_dict(), checkpoint_id=directory / "saved_on_1")
    torch.manual_seed(SEED + 4)
    torch.save(Chain().state_dict(), directory / "full_state_on_1.pt")


RUNS = {2: "grid,errors,chain,checkpoint,counter", 3: "grid,chain", 4: "mesh2d"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{world: (directory, {task: [result of each rank]})}``, run once (lazily) per world size."""
    done = {}

    def run(world: int):
        if world not in done:
            def make_dir():
                directory = tmp_path_factory.mktemp(f"position_parallel_{world}")
                _one_process_checkpoints(directory)
                return directory
            out, _ = run_workers(WORKER, [RUNS[world], "."], world, make_dir, _TIMEOUT)
            done[world] = out, {task: [torch.load(out / f"{task}_rank{r}.pt") for r in range(world)]
                                for task in RUNS[world].split(",")}
        return done[world]
    return run


def _close(actual, expected, dtype: str, what: str) -> None:
    assert tuple(actual.shape) == tuple(expected.shape), (what, tuple(actual.shape), tuple(expected.shape))
    torch.testing.assert_close(actual, expected.to(actual.dtype), **TOL[dtype], msg=lambda m: f"{what}: {m}")


def _rows(t, span, dim=2):
    return t.narrow(dim, span[0], span[1] - span[0])


def _reference(case, world):
    layer = case.build(world, backend="auto")        # one process, the default backend
    x, g = case.data(layer)
    x.requires_grad_()
    y = layer(x)
    y.backward(g)
    if case.dtype == "float64" and case.batch:     # the single-process layer is the loop reference's
        expand = getattr(layer, "expanded_weight", None)
        w = expand() if expand else layer.weight
        b = layer.expanded_bias() if expand else layer.bias
        loop = locally_connected_reference(x.detach(), w.detach(), None if b is None else b.detach(), layer.stride,
                                           layer.padding, layer.dilation, layer.groups, layer.padding_mode)
        torch.testing.assert_close(y.detach(), loop, **TOL["float64"])
    return layer, y.detach(), x.grad


@needs_workers
@pytest.mark.parametrize(("world", "case"), GRID, ids=[f"{c.id}-{w}" for w, c in GRID])
def test_matches_one_process(runs, world, case):
    _, results = runs(world)
    layer, y, x_grad = _reference(case, world)
    unbatched = case.variant == "unbatched"
    held = 0
    for rank, res in enumerate(results["grid"]):
        got = res[case.id]
        what = f"{case.id} on rank {rank} of {world}"
        assert got["out_rows"] == (lambda r: (r.start, r.stop))(shard_range(layer.output_size[0], world, rank))
        assert got["out_type"] == ("Tensor" if case.local_output else "DTensor"), what
        if not case.local_output:
            assert got["out_placements"] == ["R" if case.layouts[1] == "R" else "S(2)"], what
        _close(got["out"], y if case.layouts[1] == "R" else _rows(y, got["out_rows"]), case.dtype, f"{what} output")
        expected = x_grad if got["x_layout"] == "R" or unbatched else _rows(x_grad, got["owned"])
        _close(got["x_grad"], expected, case.dtype, f"{what} input gradient")
        for name, p in layer.named_parameters():
            local = got["params"][name]
            if name == "weight" or not layer.shared_bias:
                dim = 0 if name == "weight" else 1
                assert local["placements"] == [f"S({dim})"], (what, name)
                _close(local["grad"], _rows(p.grad, got["weight_rows"], dim), case.dtype, f"{what} {name} gradient")
            else:
                assert local["placements"] == ["R"], (what, name)
                _close(local["grad"], p.grad, case.dtype, f"{what} {name} gradient")
        # each rank holds its DTensor chunk of the weight's rows, about 1/world of them
        rows = layer.weight.shape[0]
        assert got["weight_rows"] == (lambda r: (r.start, r.stop))(shard_range(rows, world, rank)), what
        local_rows = got["params"]["weight"]["local_shape"][0]
        assert local_rows == len(shard_range(rows, world, rank)) <= math.ceil(rows / world), what
        held += math.prod(got["params"]["weight"]["local_shape"])
    assert held == layer.weight.numel()


@needs_workers
def test_refusals_on_the_mesh(runs):
    _, results = runs(2)
    expected = {
        "region": r"ValueError: PositionParallel: the filter banks of this RegionLocallyConnected2d do not split "
                  r"along rows over 2 ranks: rank 1 computes output rows \[3, 4, 5\], which use bank rows \[1, 2\], "
                  r"but would hold bank rows \[2\]",
        "tiled": r"filter banks of this TiledLocallyConnected2d do not split along rows over 2 ranks: rank 0 "
                 r"computes output rows \[0, 1, 2\], which use bank rows \[0, 1\], but would hold bank rows \[0\]",
        "twice": r"ValueError: PositionParallel: this LocallyConnected2d is already distributed",
        "mesh2d": r"ValueError: PositionParallel: expected a 1-d DeviceMesh",
        "whole_input": r"ValueError: LocallyConnected2d \(PositionParallel\): expected \(N, C, \*spatial\) = "
                       r"\(N, 3, 3, 8\): this rank's rows \d:\d of input of size \(6, 8\), got input of shape "
                       r"\(2, 3, 6, 8\)",
        "channels": r"ValueError: .*expected \(N, C, \*spatial\) = \(N, 3, 3, 8\).*got input of shape \(2, 4, 3, 8\)",
        "unbatched": r"ValueError: .*expected a 4-d \(N, C, \*spatial\) input \(unbatched inputs need Replicate\(\) "
                     r"input and output\), got input of shape \(3, 3, 8\)",
    }
    for rank, res in enumerate(results["errors"]):
        for key, pattern in expected.items():
            assert res[key] is not None and re.search(pattern, res[key]), (rank, key, res[key])


def _assert_params(actual: dict, expected: dict, what: str, rows=None) -> None:
    assert actual.keys() == expected.keys(), (what, sorted(actual), sorted(expected))
    for name, e in expected.items():
        if rows and name in rows:
            dim, start, stop = rows[name]
            e = e.narrow(dim, start, stop - start)
        _close(actual[name], e, "float64", f"{what} {name}")


@needs_workers
@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("local_output", [True, False], ids=["local_outputs", "dtensor_outputs"])
def test_chained_layers_train_as_one_process(runs, world, local_output):
    _, results = runs(world)
    torch.manual_seed(SEED)
    model = Chain()
    grads, params, outputs = train_chain(model)
    for rank, res in enumerate(results["chain"]):
        run = res[local_output]
        what = f"chain rank {rank} of {world}"
        _assert_params(run["grads"], grads, f"{what} gradient")
        for step, (p, ref) in enumerate(zip(run["params"], params)):
            _assert_params(p, ref, f"{what} parameter after step {step + 1}")
            _close(run["outputs"][step], outputs[step], "float64", f"{what} output of step {step + 1}")
        for name in ("lc1.weight", "lc2.weight", "tiled.weight"):
            rows = model.get_parameter(name).shape[0]
            assert run["local_shapes"][name][0] == len(shard_range(rows, world, rank)), (what, name)


@needs_workers
def test_checkpoints_between_world_sizes(runs):
    out, results = runs(2)
    torch.manual_seed(SEED)
    trained = Chain()
    train_chain(trained)
    expected = dict(trained.state_dict())
    # 2 -> 1: the DCP checkpoint of the two ranks, loaded in this process into a plain model
    torch.manual_seed(SEED + 9)
    plain = Chain()
    state = plain.state_dict()
    dcp.load(state, checkpoint_id=out / "saved_on_world")
    plain.load_state_dict(state)
    _assert_params(dict(plain.state_dict()), expected, "loaded from 2 ranks")
    # the full state dict, gathered on request: plain tensors, loadable into a plain model
    full = torch.load(out / "full_state_on_world.pt")
    assert all(type(t) is torch.Tensor for t in full.values())
    _assert_params(full, expected, "full state dict")
    Chain().load_state_dict(full)
    # 1 -> 2: what this process saved, loaded on the two ranks into DTensors
    x = chain_batches()[0][0]
    for source, seed in (("dcp", SEED + 3), ("full", SEED + 4)):
        torch.manual_seed(seed)
        saved = Chain()
        with torch.no_grad():
            y = saved(x)
        for rank, res in enumerate(results["checkpoint"]):
            got = res[source]
            assert got["dtensor"] == {n: n != "head.weight" and n != "head.bias"
                                      for n, _ in saved.named_parameters()}, got["dtensor"]
            _assert_params(got["params"], dict(saved.named_parameters()), f"{source} loaded on rank {rank}")
            _close(got["out"], y, "float64", f"{source} loaded on rank {rank}: output")


@needs_workers
@pytest.mark.skipif(not fsdp2_available(), reason="no torch.distributed.fsdp.fully_shard (FSDP2, PyTorch >= 2.6)")
@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_data_parallel_over_a_2d_mesh(runs, engine):
    _, results = runs(4)
    torch.manual_seed(SEED)
    grads, params, outputs = train_chain(Chain())
    per_rank = len(chain_batches()[0][0]) // 2
    for res in results["mesh2d"]:
        run = res[engine]
        what = f"{engine}: data rank {res['data']}, position rank {res['position']}"
        _assert_params(run["grads"], grads, f"{what} gradient", run["rows"])
        for step, (p, ref) in enumerate(zip(run["params"], params)):
            _assert_params(p, ref, f"{what} parameter after step {step + 1}", run["rows"])
        # the outputs of one process on the same examples (a mean loss over the data ranks' halves)
        part = slice(res["data"] * per_rank, (res["data"] + 1) * per_rank)
        for step, out in enumerate(run["outputs"]):
            _close(out, outputs[step][part], "float64", f"{what} output of step {step + 1}")


@needs_workers
def test_the_benchmark_counts_the_bytes_sent(runs):
    """``benchmarks/harness/collectives.py`` on two training steps of the chain (float64, batch 4),
    on 2 processes:
    under PositionParallel, the bytes its row plans predict, by kind; under DDP, the ring
    all-reduce of every gradient, 2 (W-1)/W of the parameters' bytes, per step."""
    _, results = runs(2)
    torch.manual_seed(SEED)
    model, world, steps, batch = Chain(), 2, 2, len(chain_batches()[0][0])
    layouts = {"lc1": (False, True), "lc2": (True, True), "tiled": (True, False)}      # sharded in, out
    predicted = [sum(s) for s in zip(*(position_parallel_sent(model.get_submodule(n), *io, batch, world, itemsize=8,
                                                              input_grad=n != "lc1")   # lc1 reads the data
                                      for n, io in layouts.items()))]
    param_bytes = sum(p.numel() * 8 for p in model.parameters())
    for rank, res in enumerate(results["counter"]):
        assert res["position"]["receive"] == 0
        assert sum(res["position"].values()) == pytest.approx(steps * predicted[rank], abs=1e-6), (rank, res)
        assert set(res["position"]) == {"send", "receive", "all-gather", "all-reduce"}, res["position"]
        sent = {kind: b for kind, b in res["ddp"].items() if b}          # its broadcasts send nothing here
        assert sent == pytest.approx({"all-reduce": steps * 2 * (world - 1) / world * param_bytes}), res["ddp"]

