"""The implementations compared: our layer on each backend, the unfold recipes people copy
(``unfold`` + ``einsum``, ``unfold`` + ``bmm``) and JAX's ``conv_general_dilated_local``; and the
checks that they compute the same thing (against each other, and against the float64 reference)."""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import unshared
import unshared.functional as UF

from .cases import Case, dtype_name
from .devices import Device
from .measure import log

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX beside PyTorch on one GPU
try:
    import jax
    import jax.numpy as jnp
    import numpy as np
except ImportError:
    jax = None

REPO = Path(__file__).resolve().parents[2]  # the checkout


@dataclass
class Steps:
    """One provider on one case: a callable per mode, and how to time it and get its memory."""
    output: Callable[[], torch.Tensor]             # forward output, as a torch tensor (for checks)
    run: dict[str, Callable[[], object]]           # mode -> one step
    peak_bytes: Callable[[str], int | None]        # mode -> peak transient bytes, None if unknown
    host_clock: bool = False                       # synchronous steps outside PyTorch's stream


def torch_steps(forward: Callable, x: torch.Tensor, w: torch.Tensor, grad_out: torch.Tensor,
                device: Device, *more: torch.Tensor) -> Steps:
    """``forward(x, w)`` with and without its gradients in ``x``, ``w`` and the tensors ``more``
    that ``forward`` also reads (a bias)."""
    def fwd():
        with torch.no_grad():
            return forward(x, w)

    def fwd_bwd():
        return torch.autograd.grad(forward(x, w), (x, w, *more), grad_out)

    run = {"forward": fwd, "forward+backward": fwd_bwd}
    return Steps(fwd, run, lambda mode: device.peak_transient_bytes(run[mode]))


def case_tensors(case: Case, device: Device, dtype: torch.dtype, seed: int = 0):
    """The case's layer (no bias; the library's default weight layout), an input that requires
    gradients, and a fixed random output gradient."""
    torch.manual_seed(seed)
    dev = device.torch_device
    layer = getattr(unshared, f"LocallyConnected{case.nd}d")(case.in_channels, case.out_channels, case.kernel_size,
                                                stride=case.stride, padding=case.padding,
                                                input_size=case.input_size, bias=False, device=dev, dtype=dtype)
    x = torch.randn(case.batch, case.in_channels, *case.input_size, device=dev, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(case.batch, case.out_channels, *case.output_size, device=dev, dtype=dtype)
    return layer, x, grad_out


def unshared_provider(backend: str, contiguous: bool = False) -> Callable[..., Steps]:
    """Steps of ``unshared.functional.locally_connected`` with ``backend`` (no bias), on the
    layer's weight (its layout as the layer holds it, read without a copy) or, with
    ``contiguous``, on a copy contiguous in the public shape (channel-major: what
    ``weight.data = weight.data.contiguous()`` gives, for tools that flatten parameters)."""
    def make(case: Case, w: torch.Tensor, x, grad_out, device: Device) -> Steps:
        def forward(x, w):
            return UF.locally_connected(x, w, None, case.stride, case.padding, backend=backend)
        if contiguous:
            w = w.detach().contiguous().requires_grad_()
        return torch_steps(forward, x, w, grad_out, device)
    return make


def unshared_bias_provider(backend: str) -> Callable[..., Steps]:
    """Steps of ``unshared.functional.locally_connected`` with ``backend`` and the layers' default
    bias, one per output position (``(O, *output_size)``), as users build the layers; the training
    step also takes the bias's gradient. The bias is zero, so that the output equals the other
    providers' (the kernels add it and sum its gradient whatever its values)."""
    def make(case: Case, w: torch.Tensor, x, grad_out, device: Device) -> Steps:
        bias = torch.zeros(case.out_channels, *case.output_size, device=x.device, dtype=x.dtype, requires_grad=True)

        def forward(x, w):
            return UF.locally_connected(x, w, bias, case.stride, case.padding, backend=backend)
        return torch_steps(forward, x, w, grad_out, device, bias)
    return make


def patches(x: torch.Tensor, case: Case) -> torch.Tensor:
    """The unfold recipe's patch matrix ``(N, C * prod(kernel), L)``: ``F.unfold`` in 2d (what
    people copy), ``F.pad`` + ``Tensor.unfold`` per dimension in 1d and 3d (``F.unfold`` is 2d only)."""
    if case.nd == 2:
        return F.unfold(x, case.kernel_size, padding=case.padding, stride=case.stride)
    x = F.pad(x, [p for p in reversed(case.padding) for _ in range(2)])
    for d, (k, s) in enumerate(zip(case.kernel_size, case.stride)):
        x = x.unfold(2 + d, k, s)                          # (N, C, *out, *kernel) when done
    n, c, nd = x.shape[0], x.shape[1], case.nd
    x = x.permute(0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd))  # (N, C, *kernel, *out)
    return x.reshape(n, c * math.prod(case.kernel_size), case.positions)


def unfold_einsum_steps(case: Case, w: torch.Tensor, x, grad_out, device: Device) -> Steps:
    w = w.detach().reshape(case.positions, case.out_channels, -1).contiguous()

    def forward(x, w):
        return torch.einsum("ncl,loc->nol", patches(x, case), w).reshape(x.shape[0], -1, *case.output_size)

    return torch_steps(forward, x, w.requires_grad_(), grad_out, device)


def unfold_bmm_steps(case: Case, w: torch.Tensor, x, grad_out, device: Device) -> Steps:
    """The unfold recipe with one batched matmul over positions (cuBLAS on a GPU): the explicit
    form of the recipe, with the patch tensor laid out position-major."""
    w = w.detach().reshape(case.positions, case.out_channels, -1).transpose(1, 2).contiguous()  # (L, CK, O)

    def forward(x, w):
        cols = patches(x, case).permute(2, 0, 1)                             # (L, N, C*K)
        return torch.bmm(cols, w).permute(1, 2, 0).reshape(x.shape[0], -1, *case.output_size)

    return torch_steps(forward, x, w.requires_grad_(), grad_out, device)


def jax_device(kind: str):
    """The JAX device for ``kind`` (``"cpu"``, or ``"cuda"``: a JAX GPU device, the one with
    PyTorch's current index when there are several), or None when JAX or that backend is missing."""
    if jax is None:
        return None
    try:
        devices = jax.devices("gpu" if kind == "cuda" else "cpu")
    except RuntimeError:  # no such backend
        return None
    index = torch.cuda.current_device() if kind == "cuda" else 0
    return devices[index] if index < len(devices) else None


def jax_steps(case: Case, w: torch.Tensor, x, grad_out, device: Device) -> Steps:
    nd, where, dtype = case.nd, jax_device(device.kind), jnp.dtype(dtype_name(x.dtype))
    # default dimension numbers (NC*spatial): rhs is (O, C*prod(kernel), *output_size), C-major in dim 1
    rhs = w.detach().reshape(*case.output_size, case.out_channels, -1).permute(nd, nd + 1, *range(nd))
    # through float32 on the host (exact for bfloat16/float16), then the same dtype on JAX's device
    xj, wj, gj = (jax.device_put(t.detach().float().cpu().contiguous().numpy(), where).astype(dtype)
                  for t in (x, rhs, grad_out))
    # float32 on a GPU: TF32 only when PyTorch's matmuls may use it too (XLA's default precision may)
    full = x.dtype == torch.float32 and device.kind == "cuda" and not torch.backends.cuda.matmul.allow_tf32
    precision = jax.lax.Precision.HIGHEST if full else None

    def forward(x, w):  # bfloat16/float16 in and out; XLA chooses the accumulation type
        return jax.lax.conv_general_dilated_local(x, w, case.stride, [(p, p) for p in case.padding],
                                                  case.kernel_size, precision=precision)

    compiled = {
        "forward": (jax.jit(forward), (xj, wj)),
        "forward+backward": (jax.jit(jax.grad(lambda x, w, g: jnp.sum(forward(x, w) * g),
                                              argnums=(0, 1))), (xj, wj, gj)),
    }
    run = {mode: (lambda f=f, args=args: jax.block_until_ready(f(*args)))
           for mode, (f, args) in compiled.items()}

    def peak_bytes(mode):
        """XLA's buffer assignment for the compiled step: temporaries + outputs."""
        f, args = compiled[mode]
        stats = f.lower(*args).compile().memory_analysis()
        if stats is None:
            return None
        return stats.temp_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes

    def output():
        y = np.asarray(run["forward"]().astype(jnp.float32))
        return torch.from_numpy(y).to(x.device, x.dtype)

    return Steps(output, run, peak_bytes, host_clock=True)


#: provider -> the unshared backend it runs
BACKENDS = {"unshared-auto": "auto", "unshared-torch": "torch", "unshared-cpu": "cpu", "unshared-triton": "triton"}
PROVIDERS = {
    **{name: unshared_provider(backend) for name, backend in BACKENDS.items()},
    "unshared-cpu-contiguous": unshared_provider("cpu", contiguous=True),
    "unshared-cpu-bias": unshared_bias_provider("cpu"),
    "unshared-auto-bias": unshared_bias_provider("auto"),
    "unfold+einsum": unfold_einsum_steps,
    "unfold+bmm": unfold_bmm_steps,
    "jax": jax_steps,
}


def uses_triton(providers) -> bool:
    return any(BACKENDS.get(p) == "triton" for p in providers)


# ----------------------------------------------------------------------------- checks

def check_against_reference(device: Device, backends=("auto",)) -> None:
    """Each backend matches the float64 loop reference (tests/reference.py) on a tiny strided,
    padded shape, in float64 on ``device``; skipped, with a note, outside a source tree."""
    if not (REPO / "tests" / "reference.py").is_file():
        log("note: tests/reference.py not found (installed package); reference check skipped")
        return
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    from reference import locally_connected_reference

    for backend in backends:
        torch.manual_seed(0)
        layer = unshared.LocallyConnected2d(3, 4, 3, stride=2, padding=1, input_size=(7, 6), bias=False,
                                            device=device.torch_device, dtype=torch.float64, backend=backend)
        x = torch.randn(2, 3, 7, 6, dtype=torch.float64, device=device.torch_device)
        with torch.no_grad():
            got = layer(x).cpu()
        want = locally_connected_reference(x.cpu(), layer.weight.detach().cpu(), stride=2, padding=1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def output_tolerance(dtype: torch.dtype, device: Device) -> float:
    """Relative tolerance between providers' outputs: a few roundings of the output dtype."""
    if dtype in (torch.bfloat16, torch.float16):
        return 3e-2
    if device.kind == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return 1e-2
    return 1e-4


def check_same_output(name: str, case_key: str, got: torch.Tensor, want: torch.Tensor, tol: float,
                      baseline: str) -> None:
    got, want = got.float().cpu(), want.float().cpu()
    atol = tol * max(1.0, want.abs().max().item())  # relative to the output's scale when above 1
    if got.shape != want.shape or not torch.allclose(got, want, rtol=tol, atol=atol):
        err = (got - want).abs().max().item() if got.shape == want.shape else "shape mismatch"
        raise AssertionError(f"{name} differs from {baseline} on {case_key}: max abs error {err}")
