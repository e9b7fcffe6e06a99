"""The calls that tests/test_sanitizer.py makes with the CPU kernels built with AddressSanitizer and
UndefinedBehaviorSanitizer (run as a script, the kernels loaded from ``UNSHARED_CPU_LIBRARY``).

On every instruction set: adversarial layers (batch 0, kernels larger than the input, strides and
dilations up to 1000, groups = channels, expanded, permuted and overlapping ``as_strided`` inputs
and weights, serial and threaded) and a short seeded random sweep, each against the float64
reference, forward and both gradients; then calls that lie to the kernels (tensors that do not fit
the geometry, bank indices out of range, sizes that overflow), through the operators and straight
into the backend, which must be refused. A wrong number or a missing refusal exits non-zero; the
sanitizers abort on any bad access or undefined behaviour.
"""
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from configs import Config  # noqa: E402
from reference import locally_connected_reference  # noqa: E402
from test_operator_entry import G, bad_calls  # noqa: E402

import unshared.functional as UF  # noqa: E402
from unshared._utils import Geometry  # noqa: E402
from unshared.backends import cpu  # noqa: E402

FN = {1: UF.locally_connected1d, 2: UF.locally_connected2d, 3: UF.locally_connected3d}
counts = {"checked": 0, "refused": 0}


def check(x, w, b=None, **kwargs):
    """Forward, input and weight gradients of the cpu backend against the reference (float64)."""
    nd = w.dim() // 2 - 1
    y = FN[nd](x, w, b, **kwargs, backend="cpu")
    want = locally_connected_reference(x, w, b, **kwargs)
    torch.testing.assert_close(y, want)
    gy = torch.randn(y.shape, dtype=y.dtype)
    sources = [t for t in (x, w) if t.requires_grad]
    for got, ref in zip(torch.autograd.grad(y, sources, gy), torch.autograd.grad(want, sources, gy)):
        torch.testing.assert_close(got, ref)
    counts["checked"] += 1


def rand(*shape):
    """A float64 leaf that requires grad (its views then do too: every gradient is checked)."""
    return torch.randn(*shape, dtype=torch.float64).requires_grad_()


def weight(grid, out, cg, kernel):
    return rand(*grid, out, cg, *kernel)


def adversarial():
    check(rand(0, 3, 5, 5), weight((3, 3), 4, 3, (3, 3)))                     # batch 0
    check(rand(2, 2, 3, 3), weight((3, 3), 3, 2, (5, 5)), padding=2)           # kernel > input
    check(rand(2, 2, 3), weight((1,), 3, 2, (7,)), padding=3, stride=1000)
    check(rand(2, 2, 7), weight((1,), 3, 2, (3,)), padding=1, stride=1000)
    check(rand(2, 2, 5), weight((5,), 3, 2, (2,)), padding=500, dilation=1000)
    check(rand(1, 2, 4, 5), weight((2, 1), 2, 2, (2, 3)), padding=(1, 600), stride=(3, 999),
          dilation=(2, 600))
    check(rand(3, 4, 6, 6), weight((4, 4), 8, 1, (3, 3)), groups=4)             # groups = channels
    check(rand(3, 4, 4, 4, 4), weight((3, 1, 2), 4, 1, (2, 3, 3)), groups=4, stride=(1, 2, 1))
    base = rand(1, 3, 6, 7)
    check(base.expand(4, 3, 6, 7), weight((4, 5), 5, 3, (3, 3)))                                 # expanded batch
    check(rand(3, 1, 6, 7).expand(3, 4, 6, 7), weight((4, 5), 6, 2, (3, 3)), groups=2)          # expanded channels
    check(rand(6, 7, 2, 3).permute(2, 3, 0, 1), weight((6, 7), 4, 3, (3, 3)), padding=1)        # permuted
    check(rand(7, 3, 2).permute(2, 1, 0), weight((5,), 4, 3, (3,)))
    flat = rand(400)
    check(flat.as_strided((2, 3, 6, 7), (5, 1, 7, 1)), weight((4, 5), 4, 3, (3, 3)))           # overlapping
    check(flat.as_strided((3, 2, 9), (0, 4, 3)), weight((9,), 2, 2, (3,)), padding=2, dilation=2)
    w = rand(3 * 2 * 3 * 3).as_strided((4, 5, 3, 2, 3, 3), (0, 1, 6, 9, 3, 1))                 # overlapping weight
    check(rand(2, 2, 6, 7), w)
    check(rand(2, 2, 6, 7), rand(1, 1, 3, 2, 3, 3).expand(4, 5, 3, 2, 3, 3))  # expanded weight
    check(rand(2, 4, 8, 9).contiguous(memory_format=torch.channels_last),
          rand(6, 7, 5, 3, 3, 4).permute(0, 1, 2, 5, 3, 4))                                     # kernel-major weight


def few_channels():
    """The rows path's shapes (csrc/kernels_rows*.h): few channels, long rows with partial tiles,
    strides, dilations, groups, kernels past the input, and one-sided padding straight into the backend."""
    check(rand(3, 1, 203), weight((194,), 1, 1, (10,)))
    check(rand(2, 4, 77), weight((40,), 8, 4, (5,)), padding=3, stride=2)
    check(rand(2, 2, 5, 41), weight((3, 14), 4, 1, (3, 4)), padding=1, stride=(1, 3), dilation=(2, 1), groups=2)
    check(rand(2, 2, 3, 4, 37), weight((3, 4, 37), 3, 2, (3, 3, 3)), padding=1)
    check(rand(2, 3, 6), weight((6,), 2, 3, (9,)), padding=4)                                  # kernel > input
    check(rand(2, 3, 5, 33).contiguous(memory_format=torch.channels_last), weight((5, 33), 4, 3, (3, 3)), padding=1)
    for low in (9, 0):  # causal, and all on the high side
        g = Geometry((50,), (50,), (10,), (1,), ((low, 9 - low),), (1,), 1, 2, 3)
        x, w, gy = rand(3, 2, 50), rand(50, 3, 2, 10), rand(3, 3, 50)
        want = locally_connected_reference(torch.nn.functional.pad(x, (low, 9 - low)), w)
        want_gx, want_gw = torch.autograd.grad(want, (x, w), gy)
        torch.testing.assert_close(cpu.forward(x.detach(), w.detach(), g), want)
        torch.testing.assert_close(cpu.input_grad(gy.detach(), w.detach(), g), want_gx)
        torch.testing.assert_close(cpu.weight_grad(x.detach(), gy.detach(), g, kernel_major=False), want_gw)
        counts["checked"] += 1


def random_sweep(seed: int, count: int):
    rng = random.Random(seed)
    for _ in range(count):
        nd, groups = rng.choice([1, 2, 2, 3]), rng.choice([1, 1, 2])
        kernel = tuple(rng.randint(1, 3) for _ in range(nd))
        dilation, stride = tuple(rng.randint(1, 2) for _ in range(nd)), tuple(rng.randint(1, 3) for _ in range(nd))
        padding = rng.randint(0, 2)
        size = tuple(max(1, d * (k - 1) + 1 - 2 * padding) + rng.randint(0, 4) for k, d in zip(kernel, dilation))
        cfg = Config(nd, groups * rng.randint(1, 9), groups * rng.randint(1, 9), kernel, stride, padding, dilation,
                     groups, rng.choice(["zeros", "zeros", "circular"]), size, rng.choice([None, 1, 2, 5, 17]),
                     rng.choice([None, "position", "shared"]),
                     rng.choice(["contiguous", "noncontiguous", "channels_last"]), rng.random() < 0.5)
        if cfg.padding_mode == "circular" and any(padding > i for i in size):
            cfg.padding_mode = "zeros"
        x, w, b = cfg.tensors(seed=rng.randint(0, 1 << 30), requires_grad=True)
        check(x, w, b, **cfg.kwargs())


def sparse_layers():
    """The sparse layer's three kernels (csrc/sparse.c) against its dense reference: batches past a
    tile of samples, channels, outputs with no inputs, a run of inputs across several blocks."""
    from test_sparse import reference as sparse_reference
    from unshared.sparse import connectivity as K
    from unshared.functional import sparsely_connected
    n_in = 2 * K.BLOCK + 37
    chain = torch.stack([torch.arange(n_in), torch.arange(n_in) * 7 // n_in])
    extra = torch.tensor([[0, 3, K.BLOCK, n_in - 1], [8, 8, 9, 2]])  # output 10: no inputs
    pairs = torch.cat([chain, extra], 1)
    for batch, c, o, dtype in ((1, 1, 1, torch.float64), (37, 1, 2, torch.float64), (70, 3, 2, torch.float64),
                               (9, 2, 6, torch.float64), (35, 2, 3, torch.float32)):
        x = torch.randn(batch, c, n_in, dtype=dtype, requires_grad=True)
        w = torch.randn(pairs.shape[1], o, c, dtype=dtype, requires_grad=True)
        y = sparsely_connected(x, w, pairs, None, 11, backend="cpu")
        want = sparse_reference(x, w, pairs, None, n_in, 11).to(dtype)  # (float32: some rows' lines aligned)
        tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
        torch.testing.assert_close(y, want, **tol)
        gy = torch.randn_like(y)
        for got, ref in zip(torch.autograd.grad(y, (x, w), gy), torch.autograd.grad(want, (x, w), gy)):
            torch.testing.assert_close(got, ref, **tol)
        counts["checked"] += 1


def refused(call, message: str):
    try:
        call()
    except ValueError as error:
        if message not in str(error):
            raise AssertionError(f"refused with another reason: {error}") from error
        counts["refused"] += 1
        return
    raise AssertionError(f"not refused (expected: {message})")


def lies_to_the_kernels():
    """Inconsistent calls: through the operators (checked in Python), then straight into the
    backend with a geometry that lies about the tensors (checked by C alone)."""
    for call, _ in bad_calls():
        refused(lambda: call("cpu"), "")
    x, gy = rand(2, 2, 4, 4), rand(2, 3, 2, 2)
    big = Geometry((40, 40), (38, 38), (3, 3), (1, 1), ((0, 0),) * 2, (1, 1), 1, 2, 3)
    big_w = rand(38, 38, 3, 2, 3, 3)
    refused(lambda: cpu.forward(x, big_w, big), "the input (or its gradient) reaches past")
    refused(lambda: cpu.weight_grad(x, rand(2, 3, 38, 38), big), "the input (or its gradient) reaches past")
    refused(lambda: cpu.input_grad(gy, big_w, big), "the output (or its gradient) reaches past")
    refused(lambda: cpu.forward(x, rand(1, 2, 3, 2, 3, 3), G), "the weight (or its gradient) reaches past")
    outside = Geometry((4, 4), (2, 2), (3, 3), (1, 1), ((0, 0),) * 2, (1, 1), 1, 2, 3, (1, 1), ((0, 1), (0, 0)))
    w1 = rand(1, 1, 3, 2, 3, 3)
    for call in (lambda: cpu.forward(x, w1, outside), lambda: cpu.input_grad(gy, w1, outside),
                 lambda: cpu.weight_grad(x, gy, outside)):
        refused(call, "a filter-bank index is out of range")
    huge = Geometry((5,), (3,), (1,), (2**62,), ((2**63 - 1, 2**63 - 1),), (1,), 1, 1, 1)
    for call in (lambda: cpu.forward(rand(1, 1, 5), rand(3, 1, 1, 1), huge),
                 lambda: cpu.input_grad(rand(1, 1, 3), rand(3, 1, 1, 1), huge),
                 lambda: cpu.weight_grad(rand(1, 1, 5), rand(1, 1, 3), huge)):
        refused(call, "overflows int64")


def main():
    assert cpu.library_path() is not None and str(cpu.library_path()) == os.environ.get("UNSHARED_CPU_LIBRARY"), \
        "the sanitized kernels must be the ones loaded"
    assert cpu.available_isas(), cpu._REASON
    torch.manual_seed(0)
    for i, isa in enumerate(cpu.available_isas()):
        with cpu.use_isa(isa):
            adversarial()
            random_sweep(seed=i, count=12)
            sparse_layers()
            cpu.SERIAL_BELOW, serial = 0, cpu.SERIAL_BELOW  # every call on threads
            torch.set_num_threads(4)
            adversarial()
            sparse_layers()
            random_sweep(seed=100 + i, count=6)
            cpu.SERIAL_BELOW = serial
            torch.set_num_threads(1)
            with cpu.use_path("rows"):  # every call on the few-channel path, serial and threaded
                few_channels()
                adversarial()
                random_sweep(seed=200 + i, count=8)
                cpu.SERIAL_BELOW = 0
                torch.set_num_threads(4)
                few_channels()
                cpu.SERIAL_BELOW = serial
                torch.set_num_threads(1)
    lies_to_the_kernels()
    with cpu.use_path("rows"):
        lies_to_the_kernels()
    print(f"sanitizer calls: {counts['checked']} checked against the reference on {cpu.available_isas()}, "
          f"{counts['refused']} refused")


if __name__ == "__main__":
    main()
