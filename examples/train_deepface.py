"""Train DeepFace (``unshared.models.DeepFace``) on several GPUs with torchrun: DDP, FSDP2 with
``--fsdp``, or its locally connected layers split by position with ``--position-parallel``.

The locally connected layers are ordinary ``nn.Module``s, so PyTorch's own engines run them:
``DistributedDataParallel`` all-reduces their gradients, and FSDP2 (``fully_shard``) shards their
weights (L4 alone has 62.7M) over the ranks. Both move weights every step (DDP the gradients,
FSDP2 three times the weights); ``--position-parallel`` (``unshared.distributed.PositionParallel``)
moves activations instead: each rank of a position group holds the filters of its rows of L4, L5
and L6's output positions, computes those rows on the group's common batch and exchanges only the
halo rows its windows read; the other layers are replicated in the group. With
``--position-parallel P`` the ranks form a (world / P data) x (P position) mesh, and DDP (or FSDP2
with ``--fsdp``) runs over the data dimension.

    # 8 GPUs on one machine, DDP, bfloat16 autocast
    torchrun --standalone --nproc_per_node=8 examples/train_deepface.py --batch-size 64 --steps 1000 --bf16
    # the same with FSDP2: every rank holds 1/8 of the weights, gradients and optimizer state
    torchrun --standalone --nproc_per_node=8 examples/train_deepface.py --batch-size 64 --steps 1000 --bf16 --fsdp
    # an ImageFolder of aligned faces (needs torchvision), checkpoint at the end
    torchrun --standalone --nproc_per_node=8 examples/train_deepface.py --data /data/faces/train --epochs 15 --save deepface.pt
    # L4-L6 split by position over all 8 GPUs: every rank trains on the same batch of 64
    torchrun --standalone --nproc_per_node=8 examples/train_deepface.py --batch-size 64 --steps 1000 --position-parallel
    # 4 data-parallel groups (DDP) of 2 position-parallel ranks
    torchrun --standalone --nproc_per_node=8 examples/train_deepface.py --batch-size 64 --steps 1000 --position-parallel 2
    # a check on a CPU-only machine (2 processes, gloo)
    torchrun --standalone --nproc_per_node=2 examples/train_deepface.py --device cpu --steps 2 --batch-size 2 --num-classes 10

Without ``--data`` every data-parallel rank trains on one fixed random batch (152x152 images,
random labels), so a falling loss shows that the steps work. ``--batch-size`` is per data-parallel
rank: the global batch is ``batch_size * world_size / P`` (the ranks of a position group share
their batch). Rank 0 prints the loss averaged over all ranks. Run without torchrun, the script
trains in one process.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

import unshared
from unshared.models import DeepFace


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32, help="images per process and step")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps")
    p.add_argument("--epochs", type=int, default=None, help="with --data: passes over the data (instead of --steps)")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (the paper: 0.01, momentum 0.9)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--num-classes", type=int, default=4030, help="identities (with --data: the folder's classes)")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda (one GPU per process, NCCL) or cpu (gloo)")
    p.add_argument("--fsdp", action="store_true", help="FSDP2 (fully_shard) instead of DDP")
    p.add_argument("--position-parallel", type=int, nargs="?", const=0, default=None, metavar="P",
                   help="split L4-L6 by output position over groups of P ranks (all ranks without P); "
                        "DDP or FSDP2 over the world / P groups")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16: autocast with DDP, MixedPrecisionPolicy(param_dtype=bfloat16) with FSDP2")
    p.add_argument("--data", default=None, help="an ImageFolder directory of aligned faces (imports torchvision)")
    p.add_argument("--workers", type=int, default=4, help="data loader processes per rank (with --data)")
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--save", default=None, help="write the trained model's state dict here (rank 0)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------- setup

def setup(device_type: str):
    """Join the process group torchrun describes (or make a group of one); returns rank, world size, device."""
    if device_type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU is visible; use --device cpu to run on CPU with gloo")
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device(device_type)
        backend = "gloo"
        # processes that share a machine's cores should not each start one thread per core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    if launched:
        dist.init_process_group(backend, device_id=device if device_type == "cuda" else None)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return dist.get_rank(), dist.get_world_size(), device


#: DeepFace's locally connected layers (``model.trunk`` indices) and how --position-parallel splits
#: them: L4 reads the replicated C3 output and leaves its rows sharded, L5 passes sharded rows on,
#: L6 gathers them for F7
POSITION_PLAN = {"trunk.5": {"output_layouts": "rows"}, "trunk.7": {"input_layouts": "rows", "output_layouts": "rows"},
                 "trunk.9": {"input_layouts": "rows"}}


def make_mesh(args, device: torch.device, world_size: int):
    """The (data, position) device mesh of ``--position-parallel``, or ``None``."""
    if args.position_parallel is None:
        return None
    size = args.position_parallel or world_size
    if size < 1 or world_size % size:
        raise SystemExit(f"--position-parallel {size}: must divide the number of processes ({world_size})")
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world_size // size, size), mesh_dim_names=("data", "position"))


def split_by_position(model, mesh):
    """L4-L6 split by output rows over ``mesh`` (1-d): weights, biases and gradients stay sharded."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import parallelize_module

    from unshared.distributed import PositionParallel

    plan = {name: PositionParallel(**{k: Shard(2) for k in layouts}) for name, layouts in POSITION_PLAN.items()}
    return parallelize_module(model, mesh, plan)


def build_model(args, num_classes: int, device: torch.device, mesh=None):
    """DeepFace wrapped for data parallelism: DDP, or FSDP2 with one unit per big layer; with a
    (data, position) ``mesh``, L4-L6 split over its position dimension first, and the data
    parallelism over its data dimension (none when it has one rank)."""
    model = DeepFace(num_classes=num_classes, dropout=args.dropout, device=device)
    data_mesh = None
    if mesh is not None:
        split_by_position(model, mesh["position"])
        data_mesh = mesh["data"]
        if data_mesh.size() == 1:
            return model
    if not args.fsdp:
        # broadcasts rank 0's weights; gradients are all-reduced in buckets during backward
        ddp_kw = {"device_ids": [device.index]} if device.type == "cuda" else {}
        if data_mesh is None:
            return torch.nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=True, **ddp_kw)
        # over a sub-mesh, DDP swaps the DTensor parameters for their local tensors (torch's TP +
        # DDP recipe), which the module's state_dict then misses: the DTensors, which share the
        # local tensors' storage and so follow the optimizer, are kept for counting and saving
        parameters = dict(model.named_parameters())
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_mesh=data_mesh, gradient_as_bucket_view=True,
                                                        **ddp_kw)
        ddp.position_parallel_parameters = parameters
        return ddp

    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # Every rank builds the same weights (FSDP2 does not broadcast): one seed for all.
    # FSDP2 takes only contiguous parameters: a weight stored as a strided view is re-laid out
    # once, before sharding.
    for p in model.parameters():
        if not p.is_contiguous():
            p.data = p.data.contiguous()
    kw = {"mesh": data_mesh}
    if args.bf16:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    # one FSDP unit per locally connected or linear layer (L4-L6, F7, F8): each is all-gathered
    # just before it runs and freed after; the root unit holds the two convolutions
    for layer in model.modules():
        if isinstance(layer, (unshared.LocallyConnected2d, torch.nn.Linear)):
            fully_shard(layer, **kw)
    fully_shard(model, **kw)
    return model


def describe(args, mesh, world_size: int) -> str:
    engine = "FSDP2" if args.fsdp else "DDP"
    if mesh is None:
        return f"{engine} on {world_size}"
    data, position = mesh["data"].size(), mesh["position"].size()
    split = f"L4-L6 position-parallel over {position}"
    return split if data == 1 else f"{engine} over {data} x {split}"


def count_local(model) -> tuple[int, int]:
    """(elements this rank holds, elements of the whole model)."""
    local = total = 0
    for p in getattr(model, "position_parallel_parameters", dict(model.named_parameters())).values():
        total += p.numel()
        local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
    return local, total


# ---------------------------------------------------------------------------------- data

def synthetic_batches(args, num_classes, device, rank):
    """One fixed random batch per rank, forever."""
    g = torch.Generator().manual_seed(args.seed + 1 + rank)
    x = torch.randn(args.batch_size, 3, 152, 152, generator=g).to(device)
    y = torch.randint(0, num_classes, (args.batch_size,), generator=g).to(device)
    while True:
        yield x, y


def image_folder(args, world_size, rank):
    import torchvision.transforms as T  # only with --data
    from torchvision.datasets import ImageFolder
    from torch.utils.data import DataLoader, DistributedSampler

    transform = T.Compose([T.Resize(152), T.CenterCrop(152), T.ToTensor(),
                           T.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])])
    dataset = ImageFolder(args.data, transform=transform)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=args.seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        pin_memory=args.device == "cuda", drop_last=True, persistent_workers=args.workers > 0)
    return dataset, sampler, loader


def batches_from(loader, sampler, epochs, device):
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


# ---------------------------------------------------------------------------------- training

def main(argv=None):
    args = parse_args(argv)
    rank, world_size, device = setup(args.device)
    log = print if rank == 0 else (lambda *a, **k: None)
    try:
        torch.manual_seed(args.seed)
        mesh = make_mesh(args, device, world_size)
        # the ranks of a position group train on the same examples: data ranks, not ranks, draw them
        data_rank, data_size = (mesh["data"].get_local_rank(), mesh["data"].size()) if mesh else (rank, world_size)
        if args.data is not None:
            dataset, sampler, loader = image_folder(args, data_size, data_rank)
            num_classes = len(dataset.classes)
            steps = (args.epochs * len(loader)) if args.epochs is not None else args.steps
            batches = batches_from(loader, sampler, math.ceil(steps / max(len(loader), 1)), device)
        else:
            num_classes, steps = args.num_classes, args.steps
            batches = synthetic_batches(args, num_classes, device, data_rank)

        model = build_model(args, num_classes, device, mesh)
        local, total = count_local(model)
        log(f"DeepFace: {total:,} parameters, {num_classes} classes; {describe(args, mesh, world_size)} x "
            f"{device.type} ({dist.get_backend()}); rank 0 holds {local:,} ({local / total:.0%}); "
            f"batch {args.batch_size} x {data_size} = {args.batch_size * data_size}", flush=True)
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                              weight_decay=args.weight_decay)
        # DDP: autocast runs the matmuls and convolutions in bfloat16 against float32 weights;
        # FSDP2 casts the weights itself (MixedPrecisionPolicy), so no autocast there
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 and not args.fsdp
                    else contextlib.nullcontext())

        model.train()
        start = time.perf_counter()
        for step, (x, y) in zip(range(1, steps + 1), batches):
            t0 = time.perf_counter()
            with autocast:
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % args.log_every == 0 or step == steps:
                mean = loss.detach().clone()
                dist.all_reduce(mean)          # a sum (gloo has no average): the loss over all ranks
                mean = mean.item() / world_size
                if not math.isfinite(mean):
                    raise FloatingPointError(f"step {step}: the loss is {mean}")
                seconds = time.perf_counter() - t0
                log(f"step {step}/{steps}  loss {mean:.4f}  {seconds * 1e3:.0f} ms  "
                    f"{args.batch_size * data_size / seconds:.1f} images/s", flush=True)
        log(f"trained {steps} steps in {time.perf_counter() - start:.1f} s", flush=True)

        if args.save:
            save(model, args)
            log(f"saved the model to {args.save}", flush=True)
    finally:
        dist.destroy_process_group()


def save(model, args):
    """The full (unsharded) state dict of DeepFace on rank 0, loadable with ``DeepFace().load_state_dict``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    parameters = getattr(model, "position_parallel_parameters", None)
    if parameters is not None:      # DDP over the data dimension of a position-parallel model
        state = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu() for n, p in parameters.items()}
    else:
        inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        state = get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        torch.save(state, args.save)


if __name__ == "__main__":
    main()
