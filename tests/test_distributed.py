"""The layers under PyTorch's own distributed engines: DistributedDataParallel and FSDP2.

Two CPU processes (gloo, started by ``workers.run_workers``) train a small network of locally
connected layers (2d with stride, groups, padding and shared bias; tiled 2x2; 1d) on their halves
of fixed global batches, first under DDP, then under FSDP2, and save what they see to a temporary
directory. The test process runs the same steps on the whole batches in one process and checks
that the averaged gradients and the parameters after every optimiser step are the same (float64),
and, under FSDP2, that each rank holds its ``torch.chunk`` of every locally connected weight. The
engines are used as they come: the layers are plain ``nn.Module``s whose parameters are
``nn.Parameter``s, computed by a custom op with a hand-written backward. DDP runs with the weights
in two layouts (contiguous, and a strided kernel-major view), whatever the layers' default is:
the gradients must come in the parameters' own strides. FSDP2 takes only contiguous parameters.

This file is also the worker: ``python test_distributed.py ENGINES OUT_DIR`` (``ENGINES`` is
``ddp`` or ``ddp,fsdp``) with ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unshared
from workers import distributed_unavailable, env, fsdp2_available, init_worker, run_workers

WORLD_SIZE = 2
GLOBAL_BATCH = 8
SEED = 1234
STEPS = 2                 # gradients are compared on the first step, parameters after every step
_TIMEOUT = 120            # seconds for a whole multi-process run, start-up included
DTYPE = torch.float64
REPO = Path(__file__).resolve().parent.parent
LAYOUTS = ("contiguous", "strided")


class Net(nn.Module):
    """Locally connected layers of three kinds and a linear head: 3x10x10 -> 3 classes."""

    def __init__(self, dtype=DTYPE) -> None:
        super().__init__()
        kw = {"dtype": dtype}
        # the big one: weight (8, 8, 6, 3, 3, 3), 10,368 elements, 8 output rows to shard
        self.lc1 = unshared.LocallyConnected2d(3, 6, 3, input_size=10, **kw)
        # partially shared: 4 filter banks (tile 2x2), per-position bias, padding
        self.tiled = unshared.TiledLocallyConnected2d(6, 4, 3, padding=1, input_size=8, tile_size=2, **kw)
        # stride, groups, shared bias: 4x8x8 -> 4x4x4
        self.lc2 = unshared.LocallyConnected2d(4, 4, 3, stride=2, padding=1, groups=2, input_size=8,
                                               shared_bias=True, **kw)
        # the 4x4 grid read as 16 positions of a 1d signal: 4x16 -> 3x7 (an odd grid: uneven shards)
        self.lc1d = unshared.LocallyConnected1d(4, 3, 4, stride=2, input_size=16, **kw)
        self.head = nn.Linear(3 * 7, 3, **kw)

    def forward(self, x):
        x = torch.tanh(self.lc1(x))
        x = torch.tanh(self.tiled(x))
        x = torch.tanh(self.lc2(x))
        x = torch.tanh(self.lc1d(x.flatten(2)))
        return self.head(x.flatten(1))

    def locally_connected(self):
        return [self.lc1, self.tiled, self.lc2, self.lc1d]


def kernel_major(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` ``(*grid, O, C, *kernel)`` stored kernel-major: a strided view whose storage
    runs ``(*grid, *kernel, O, C)``."""
    nd = (weight.dim() - 2) // 2
    storage = (*range(nd), *range(nd + 2, 2 * nd + 2), nd, nd + 1)
    inverse = tuple(storage.index(d) for d in range(weight.dim()))
    return weight.permute(storage).contiguous().permute(inverse)


def build(seed: int, layout: str = "contiguous") -> Net:
    """The network with its locally connected weights in ``layout`` (``"contiguous"`` or ``"strided"``)."""
    torch.manual_seed(seed)
    model = Net()
    for layer in model.locally_connected():
        w = layer.weight.data
        layer.weight.data = w.contiguous() if layout == "contiguous" else kernel_major(w)
    return model


def batches():
    """``STEPS`` fixed global batches ``(x, y)``."""
    g = torch.Generator().manual_seed(SEED + 1)
    return [(torch.randn(GLOBAL_BATCH, 3, 10, 10, generator=g, dtype=DTYPE),
             torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)) for _ in range(STEPS)]


def make_optimizer(engine: str, params):
    if engine == "ddp":
        return torch.optim.SGD(params, lr=0.5, momentum=0.9)
    return torch.optim.Adam(params, lr=0.01)


def train(model, engine, rank=0, world_size=1, full=lambda t: t):
    """Run ``STEPS`` steps on this rank's part of the global batches. Returns the gradients of the
    first step and the parameters after every step, as full (unsharded) tensors by name, and the
    strides of the first step's (local) gradients."""
    opt = make_optimizer(engine, model.parameters())
    grads, params, grad_strides = None, [], None
    per_rank = GLOBAL_BATCH // world_size
    for step, (x, y) in enumerate(batches()):
        part = slice(rank * per_rank, (rank + 1) * per_rank)
        loss = F.cross_entropy(model(x[part]), y[part])      # a mean over this rank's examples
        loss.backward()
        if step == 0:
            grads = {n: full(p.grad).detach().clone() for n, p in model.named_parameters()}
            grad_strides = {n: tuple(p.grad.stride()) for n, p in model.named_parameters()}
        opt.step()
        opt.zero_grad()
        params.append({n: full(p).detach().clone() for n, p in model.named_parameters()})
    return grads, params, grad_strides


# ---------------------------------------------------------------------------------- the workers

def _without_prefix(d: dict) -> dict:
    return {n.removeprefix("module."): t for n, t in d.items()}   # DDP's parameter names


def _ddp(rank: int, world_size: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    result = {}
    for layout in LAYOUTS:
        for bucket_view in (False, True):   # gradients copied out of DDP's buckets, or views of them
            # a different initialisation on every rank: DDP must broadcast rank 0's weights
            model = build(SEED + rank, layout)
            grads, params, grad_strides = train(DDP(model, gradient_as_bucket_view=bucket_view), "ddp",
                                                rank, world_size)
            result[layout, bucket_view] = {
                "grads": _without_prefix(grads), "params": [_without_prefix(p) for p in params],
                "grad_strides": _without_prefix(grad_strides),
                "strides": {n: tuple(p.stride()) for n, p in model.named_parameters()},
            }
    return result


def _fsdp(rank: int, world_size: int) -> dict:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    result = {"refused": {}}
    # FSDP2 takes only contiguous parameters (pytorch/pytorch#137000): a strided weight is refused
    for layout in LAYOUTS:
        layer = unshared.LocallyConnected2d(2, 2, 3, input_size=4)
        layer.weight.data = layer.weight.data.contiguous() if layout == "contiguous" else kernel_major(layer.weight.data)
        try:
            fully_shard(layer)
            result["refused"][layout] = None
        except NotImplementedError as e:
            result["refused"][layout] = str(e)
    model = build(SEED)            # FSDP2 shards what it is given: the same init everywhere
    for layer in model.locally_connected():
        fully_shard(layer)
    fully_shard(model)
    result["local_numel"] = {n: p.to_local().numel() for n, p in model.named_parameters()}
    result["is_dtensor"] = {n: isinstance(p, DTensor) for n, p in model.named_parameters()}
    result["grads"], result["params"], _ = train(model, "fsdp", rank, world_size,
                                                 full=lambda t: t.full_tensor())
    return result


def _worker(engines: str, out: Path) -> None:
    import torch.distributed as dist

    rank, world_size = init_worker()
    try:
        for engine in engines.split(","):
            result = {"ddp": _ddp, "fsdp": _fsdp}[engine](rank, world_size)
            result["rank"] = rank
            torch.save(result, out / f"{engine}_rank{rank}.pt")
            dist.barrier()
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------- the parent

_reason = distributed_unavailable()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    """Run the workers once for both engines; returns ``{engine: [result of rank 0, rank 1]}``."""
    engines = "ddp,fsdp" if fsdp2_available() else "ddp"
    out, report = run_workers(Path(__file__), [engines, "."], WORLD_SIZE,
                              lambda: tmp_path_factory.mktemp("distributed"), _TIMEOUT)
    # the layout contract: the weight gradients come in the parameters' strides, so DDP's bucket
    # views (made with the parameters' strides) take them without a warning
    assert "Grad strides do not match bucket view strides" not in report, report
    return {engine: [torch.load(out / f"{engine}_rank{r}.pt") for r in range(WORLD_SIZE)]
            for engine in engines.split(",")}


def _assert_close(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys(), (what, sorted(actual), sorted(expected))
    for name, e in expected.items():
        a = actual[name]
        assert a.shape == e.shape, (what, name, a.shape, e.shape)
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11, msg=lambda m: f"{what} {name}: {m}")


def _one_process(engine: str):
    """The gradients and parameters of the same steps on the whole batches in this process."""
    grads, params, _ = train(build(SEED), engine)
    return grads, params


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ddp_matches_one_process(worker_results, layout):
    ref_grads, ref_params = _one_process("ddp")
    reference_model = build(SEED, layout)
    assert reference_model.lc1.weight.is_contiguous() == (layout == "contiguous")
    for res in worker_results["ddp"]:
        for bucket_view in (False, True):
            run = res[layout, bucket_view]
            what = f"ddp ({layout} weights, gradient_as_bucket_view={bucket_view}) rank {res['rank']}"
            # rank 1 started from other weights: DDP broadcast rank 0's, and every step kept them equal
            _assert_close(run["grads"], ref_grads, f"{what} gradient")
            for step, (params, ref) in enumerate(zip(run["params"], ref_params)):
                _assert_close(params, ref, f"{what} parameter after step {step + 1}")
            # the weights kept their storage order through DDP and the optimiser, and the
            # gradients arrived in it
            for name, p in reference_model.named_parameters():
                assert run["strides"][name] == p.stride(), (what, name, run["strides"][name], p.stride())
                assert run["grad_strides"][name] == p.stride(), (what, name, run["grad_strides"][name])


@pytest.mark.skipif(not fsdp2_available(), reason="no torch.distributed.fsdp.fully_shard (FSDP2, PyTorch >= 2.6)")
def test_fsdp2_shards_and_matches_one_process(worker_results):
    results = worker_results["fsdp"]
    for res in results:
        # a contiguous weight is taken, a strided one refused (if a later PyTorch takes it, a
        # layer whose weight is a strided view needs no re-layout before fully_shard)
        assert res["refused"]["contiguous"] is None, res["refused"]
        assert "non-contiguous" in (res["refused"]["strided"] or ""), res["refused"]
    ref_grads, ref_params = _one_process("fsdp")
    reference_model = build(SEED)
    total = {n: p.numel() for n, p in reference_model.named_parameters()}
    for name in total:
        # every parameter is sharded on dim 0; the ranks' pieces add up to the whole
        assert sum(res["local_numel"][name] for res in results) == total[name], name
        assert all(res["is_dtensor"][name] for res in results), name
    for name in ("lc1.weight", "tiled.weight", "lc2.weight", "lc1d.weight"):
        shape = reference_model.get_parameter(name).shape
        # each rank's torch.chunk of dim 0: half the rows, the first rank the extra row of an odd count
        chunks = [len(c) for c in torch.arange(shape[0]).chunk(WORLD_SIZE)]
        assert [res["local_numel"][name] for res in results] == [c * total[name] // shape[0] for c in chunks], name
    assert [res["local_numel"]["lc1.weight"] for res in results] == [total["lc1.weight"] // 2] * 2
    for res in results:
        rank = res["rank"]
        _assert_close(res["grads"], ref_grads, f"fsdp rank {rank} full gradient")
        for step, (params, ref) in enumerate(zip(res["params"], ref_params)):
            _assert_close(params, ref, f"fsdp rank {rank} parameter after step {step + 1}")


# ---------------------------------------------------------------------------------- the example

EXAMPLE = REPO / "examples" / "train_deepface.py"
EXAMPLE_ARGS = ["--device", "cpu", "--steps", "2", "--batch-size", "2", "--num-classes", "10"]


@pytest.mark.skipif(not EXAMPLE.exists(), reason="examples/train_deepface.py is not in this checkout")
@pytest.mark.parametrize(("flags", "engine"), [([], "DDP on 2 x cpu (gloo)"),
                                               (["--position-parallel"], "L4-L6 position-parallel over 2 x cpu (gloo)")],
                         ids=["ddp", "position_parallel"])
def test_train_deepface_example_under_torchrun(tmp_path, flags, engine):
    """``torchrun --standalone --nproc_per_node=2 examples/train_deepface.py --device cpu --steps 2
    --batch-size 2 --num-classes 10``: the whole DeepFace (102M parameters with 10 classes) under
    DDP, about 12 s and 2.2 GB per process on 2 cores, and with ``--position-parallel`` (L4-L6
    split by rows, both ranks on one batch), about 6 s. (``--fsdp`` works too, about 22 s, and
    ``--position-parallel 2`` on 4 processes: checked by hand, left out of the suite for time.)"""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD_SIZE}",
           str(EXAMPLE), *EXAMPLE_ARGS, *flags]
    # a session of its own, so that a hang kills torchrun's workers with it
    proc = subprocess.Popen(cmd, env=env(), cwd=str(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish within {_TIMEOUT} s\n{stdout}\n{stderr}")
    output = f"{stdout}\n{stderr}"
    assert proc.returncode == 0, output
    assert engine in stdout, output
    losses = [float(line.split("loss ")[1].split()[0]) for line in stdout.splitlines()
              if line.startswith("step ")]
    assert len(losses) == 2, output                   # rank 0 prints one line per step, rank 1 none
    # about ln(10) = 2.30 at first for random labels, then lower: the steps fit the fixed batch
    assert abs(losses[0] - math.log(10)) < 0.25 and losses[1] < losses[0], output


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
