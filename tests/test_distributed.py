"""The layers under PyTorch's own distributed engines: DistributedDataParallel and FSDP2.

Two CPU processes (gloo, a free port chosen at run time) train a small network of locally
connected layers (2d with stride, groups, padding and shared bias; tiled 2x2; 1d) on their halves
of fixed global batches, first under DDP, then under FSDP2, and save what they see to a temporary
directory. The test process runs the same steps on the whole batches in one process and checks
that the averaged gradients and the parameters after every optimiser step are the same (float64),
and, under FSDP2, that each rank holds about half of every locally connected weight. The engines
are used as they come: the layers are plain ``nn.Module``s whose parameters are ``nn.Parameter``s,
computed by a custom op with a hand-written backward. The one preparation is for FSDP2, which
takes only contiguous parameters: the strided weights are laid out contiguously before sharding.

A hang fails instead of blocking: the process group has a timeout, and the test kills the workers
after ``_TIMEOUT`` seconds. Workers start once for both engines (importing torch dominates).

This file is also the worker: ``python test_distributed.py ENGINES OUT_DIR`` (``ENGINES`` is
``ddp`` or ``ddp,fsdp``) with ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set.
"""
from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import unshared

WORLD_SIZE = 2
GLOBAL_BATCH = 8
SEED = 1234
STEPS = 2                 # gradients are compared on the first step, parameters after every step
_TIMEOUT = 120            # seconds for a whole multi-process run, start-up included
_PG_TIMEOUT = 60          # seconds a collective may wait for the other rank
DTYPE = torch.float64
REPO = Path(__file__).resolve().parent.parent
SRC = Path(unshared.__file__).resolve().parent.parent   # the unshared the workers must import


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


def build(seed: int) -> Net:
    torch.manual_seed(seed)
    return Net()


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
    for bucket_view in (False, True):   # gradients copied out of DDP's buckets, or views of them
        # a different initialisation on every rank: DDP must broadcast rank 0's (strided) weights
        model = build(SEED + rank)
        grads, params, grad_strides = train(DDP(model, gradient_as_bucket_view=bucket_view), "ddp",
                                            rank, world_size)
        result[f"bucket_view={bucket_view}"] = {
            "grads": _without_prefix(grads), "params": [_without_prefix(p) for p in params],
            "grad_strides": _without_prefix(grad_strides),
            "strides": {n: tuple(p.stride()) for n, p in model.named_parameters()},
        }
    return result


def _fsdp(rank: int, world_size: int) -> dict:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    result = {}
    # FSDP2 takes only contiguous parameters (pytorch/pytorch#137000); the locally connected
    # weights are a strided view (kernel axes first), so as they come they are refused
    try:
        fully_shard(unshared.LocallyConnected2d(2, 2, 3, input_size=4))
        result["strided_weight_refused"] = None
    except NotImplementedError as e:
        result["strided_weight_refused"] = str(e)
    model = build(SEED)            # FSDP2 shards what it is given: the same init everywhere
    for p in model.parameters():   # the one preparation: lay the weights out contiguously
        if not p.is_contiguous():
            p.data = p.data.contiguous()
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

    torch.set_num_threads(1)           # two processes on a small machine: no oversubscription
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=_PG_TIMEOUT))
    try:
        for engine in engines.split(","):
            result = {"ddp": _ddp, "fsdp": _fsdp}[engine](rank, world_size)
            result["rank"] = rank
            torch.save(result, out / f"{engine}_rank{rank}.pt")
            dist.barrier()
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------- the parent

def _distributed_unavailable() -> str | None:
    if sys.platform == "win32":
        return "not tested on Windows (the workers rendezvous over TCP with gloo)"
    import torch.distributed as dist

    if not dist.is_available():
        return "torch.distributed is not available in this PyTorch build"
    if not dist.is_gloo_available():
        return "the gloo backend is not available in this PyTorch build"
    return None


def _fsdp2_available() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401  (FSDP2: PyTorch >= 2.6)
    except ImportError:
        return False
    return True


_reason = _distributed_unavailable()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}, **extra)
    return env


def _start_and_wait(engines: str, out: Path):
    """Start ``WORLD_SIZE`` workers and wait for them (at most ``_TIMEOUT`` s); stop the others as
    soon as one fails, since they would wait for it in a collective. Returns (timed out, exit
    codes, outputs)."""
    port = _free_port()
    procs, logs = [], []
    try:
        for rank in range(WORLD_SIZE):
            logs.append(open(out / f"rank{rank}.log", "w+"))
            env = _env(RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            procs.append(subprocess.Popen([sys.executable, __file__, engines, str(out)], env=env,
                                          stdout=logs[-1], stderr=subprocess.STDOUT, cwd=str(out)))
        deadline = time.monotonic() + _TIMEOUT
        while (any(p.poll() is None for p in procs) and time.monotonic() < deadline
               and not any(p.poll() not in (None, 0) for p in procs)):
            time.sleep(0.05)
        timed_out = any(p.poll() is None for p in procs) and time.monotonic() >= deadline
    finally:
        for p in procs:            # only the processes started here, by their handles
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
            log.close()
    return timed_out, [p.returncode for p in procs], outputs


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    """Run the workers once for both engines; returns ``{engine: [result of rank 0, rank 1]}``."""
    engines = "ddp,fsdp" if _fsdp2_available() else "ddp"
    for attempt in range(3):
        out = tmp_path_factory.mktemp("distributed")
        timed_out, codes, outputs = _start_and_wait(engines, out)
        report = "\n".join(f"--- rank {r} (exit code {c}) ---\n{o[-6000:]}"
                           for r, (c, o) in enumerate(zip(codes, outputs)))
        # the free port was taken between choosing it and binding it: choose another
        if not timed_out and any(c != 0 for c in codes) and "address already in use" in report.lower():
            continue
        break
    if timed_out:
        pytest.fail(f"the workers did not finish within {_TIMEOUT} s\n{report}")
    if any(c != 0 for c in codes):
        pytest.fail(f"a worker failed\n{report}")
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


def test_ddp_matches_one_process(worker_results):
    ref_grads, ref_params = _one_process("ddp")
    reference_model = build(SEED)
    assert not reference_model.lc1.weight.is_contiguous()  # the strided weights the checks are about
    for res in worker_results["ddp"]:
        for bucket_view in (False, True):
            run = res[f"bucket_view={bucket_view}"]
            what = f"ddp (gradient_as_bucket_view={bucket_view}) rank {res['rank']}"
            # rank 1 started from other weights: DDP broadcast rank 0's, and every step kept them equal
            _assert_close(run["grads"], ref_grads, f"{what} gradient")
            for step, (params, ref) in enumerate(zip(run["params"], ref_params)):
                _assert_close(params, ref, f"{what} parameter after step {step + 1}")
            # the weights kept their storage order (a strided view) through DDP and the optimiser,
            # and the gradients arrived in it
            for name, p in reference_model.named_parameters():
                assert run["strides"][name] == p.stride(), (what, name, run["strides"][name], p.stride())
                assert run["grad_strides"][name] == p.stride(), (what, name, run["grad_strides"][name])


@pytest.mark.skipif(not _fsdp2_available(), reason="no torch.distributed.fsdp.fully_shard (FSDP2, PyTorch >= 2.6)")
def test_fsdp2_shards_and_matches_one_process(worker_results):
    results = worker_results["fsdp"]
    for res in results:
        refused = res["strided_weight_refused"]
        # if this PyTorch (or a later unshared) takes the strided weights as they are, the
        # contiguous re-layout before fully_shard (here and in examples/) is no longer needed
        assert refused is None or "non-contiguous" in refused, refused
    ref_grads, ref_params = _one_process("fsdp")
    reference_model = build(SEED)
    total = {n: p.numel() for n, p in reference_model.named_parameters()}
    for name in total:
        # every parameter is sharded on dim 0; the ranks' pieces add up to the whole
        assert sum(res["local_numel"][name] for res in results) == total[name], name
        assert all(res["is_dtensor"][name] for res in results), name
    for name in ("lc1.weight", "tiled.weight", "lc2.weight", "lc1d.weight"):
        rows = reference_model.get_parameter(name).shape[0]
        for res in results:
            share = res["local_numel"][name] / total[name]
            # about half: dim 0 split in two, the first rank taking the extra row of an odd count
            assert abs(share - 0.5) <= 0.5 / rows + 1e-12, (name, res["rank"], share)
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
def test_train_deepface_example_under_torchrun(tmp_path):
    """``torchrun --standalone --nproc_per_node=2 examples/train_deepface.py --device cpu --steps 2
    --batch-size 2 --num-classes 10``: the whole DeepFace (102M parameters with 10 classes) under
    DDP, about 12 s and 2.2 GB per process on 2 cores. (``--fsdp`` works too, about 22 s: checked
    by hand, left out of the suite for time.)"""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD_SIZE}",
           str(EXAMPLE), *EXAMPLE_ARGS]
    # a session of its own, so that a hang kills torchrun's workers with it
    proc = subprocess.Popen(cmd, env=_env(), cwd=str(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish within {_TIMEOUT} s\n{stdout}\n{stderr}")
    output = f"{stdout}\n{stderr}"
    assert proc.returncode == 0, output
    assert "DDP on 2 x cpu (gloo)" in stdout, output
    losses = [float(line.split("loss ")[1].split()[0]) for line in stdout.splitlines()
              if line.startswith("step ")]
    assert len(losses) == 2, output                   # rank 0 prints one line per step, rank 1 none
    assert all(0 < loss < 10 for loss in losses), output   # about ln(10) = 2.3 for random labels


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
