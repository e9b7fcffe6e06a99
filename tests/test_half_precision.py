"""float16 and bfloat16 are summed in float32 and rounded once, on every backend and in every
operation.

Each exact case sums ``N`` equal products ``TERM * 1`` along one reduction: the forward (channels x
kernel), the weight gradient (the batch), the input gradient (output channels), a shared filter
bank's gradient (its positions), the transposed layer's forward (its input channels) and a
low-rank layer's combination (the rank). ``N * TERM`` is exact in float32 and its rounding to the
half type is the only right answer: a sum kept in half precision, or a conversion that truncates,
gives another (``test_the_exact_cases_tell_the_wrong_sums_apart``). Then random positive values,
summed over ``N`` terms, against the float64 sum: within one unit in the last place."""
import math

import pytest
import torch

import unshared.functional as UF
from conftest import CPU_AUTO

DTYPES = [torch.float16, torch.bfloat16]
N = 100
#: a product that is exact in the half type, with bits below the partial sums' last place
TERM = {torch.float16: 1 + 3 * 2**-10, torch.bfloat16: 1 + 3 * 2**-7}
MANTISSA = {torch.float16: 10, torch.bfloat16: 7}

try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False


def case(backend, dtype):
    marks = [pytest.mark.skipif(not HAVE_TRITON, reason="Triton is not installed")] if backend == "triton" else []
    return pytest.param(backend, dtype, marks=marks, id=f"{backend}-{str(dtype)[6:]}")


#: "cpu" is ``auto`` on CPU tensors, which leaves half precision to the PyTorch backend (the
#: compiled kernels take float32 and float64); "conv" computes shared filter banks.
BACKENDS = ("torch", "cpu", "composite", "conv", "triton")
CASES = [case(b, d) for b in BACKENDS for d in DTYPES]


def device(backend):
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def name(backend):
    return "auto" if backend == "cpu" else backend


def lc(x, w, backend, positions=1):
    """The 1d layer; on ``conv`` (and wherever ``positions`` > 1) one filter bank shared by all positions."""
    banks = ((0,) * positions,) if backend == "conv" or positions > 1 else None
    return UF.locally_connected1d(x, w, backend=name(backend), banks=banks)


def filled(value, *shape, dtype, backend, grad=False):
    return torch.full(shape, value, dtype=dtype, device=device(backend), requires_grad=grad)


def expected(dtype):
    return torch.tensor(N * TERM[dtype], dtype=torch.float64).to(dtype).item()  # exact in float32, rounded once


@pytest.mark.parametrize("dtype", DTYPES, ids=["float16", "bfloat16"])
def test_the_exact_cases_tell_the_wrong_sums_apart(dtype):
    term = torch.tensor(TERM[dtype], dtype=dtype)
    assert term.item() == TERM[dtype]  # the products are exact
    half_sum = torch.zeros((), dtype=dtype)
    for _ in range(N):
        half_sum = half_sum + term
    exact = N * TERM[dtype]
    ulp = 2.0 ** (math.floor(math.log2(exact)) - MANTISSA[dtype])
    truncated = math.floor(exact / ulp) * ulp
    assert len({half_sum.item(), truncated, expected(dtype)}) == 3
    assert abs(expected(dtype) - exact) <= ulp / 2


@pytest.mark.parametrize("backend,dtype", CASES)
def test_equal_products_sum_in_float32(backend, dtype):
    if backend == "cpu" and CPU_AUTO == "cpu":
        with pytest.raises(ValueError, match=rf"dtype {dtype} is not supported by the compiled kernels"):
            UF.locally_connected1d(filled(1, 1, 1, 1, dtype=dtype, backend=backend),
                                   filled(1, 1, 1, 1, 1, dtype=dtype, backend=backend), backend="cpu")
    want, t = expected(dtype), TERM[dtype]
    kw = dict(dtype=dtype, backend=backend)
    # forward: 4 channels x 25 taps
    assert lc(filled(1, 1, 4, 25, **kw), filled(t, 1, 1, 4, 25, **kw), backend).item() == want
    # weight gradient: the batch
    x, w = filled(1, N, 1, 1, **kw, grad=True), filled(1, 1, 1, 1, 1, **kw, grad=True)
    lc(x, w, backend).backward(filled(t, N, 1, 1, **kw))
    assert w.grad.dtype == dtype and w.grad.item() == want
    # input gradient: the output channels
    x, w = filled(1, 1, 1, 1, **kw, grad=True), filled(t, 1, N, 1, 1, **kw, grad=True)
    lc(x, w, backend).backward(filled(1, 1, N, 1, **kw))
    assert x.grad.dtype == dtype and x.grad.item() == want
    # a shared bank's gradient: its positions
    x, w = filled(1, 1, 1, N, **kw, grad=True), filled(1, 1, 1, 1, 1, **kw, grad=True)
    y = lc(x, w, backend, positions=N)
    assert y.shape == (1, 1, N)
    y.backward(filled(t, 1, 1, N, **kw))
    assert w.grad.item() == want


@pytest.mark.parametrize("backend,dtype", [c for c in CASES if c.values[0] != "conv"])
def test_transposed_forward_sums_in_float32(backend, dtype):
    kw = dict(dtype=dtype, backend=backend)
    y = UF.locally_connected_transpose1d(filled(1, 1, N, 1, **kw), filled(TERM[dtype], 1, N, 1, 1, **kw),
                                         backend=name(backend))
    assert y.item() == expected(dtype)


@pytest.mark.parametrize("backend,dtype", CASES)
def test_low_rank_combination_sums_in_float32(backend, dtype):
    # the combination over the rank (on conv) or the per-position filters it builds (elsewhere)
    kw = dict(dtype=dtype, backend=backend)
    y = UF.low_rank_locally_connected(filled(1, 1, 1, **kw), filled(TERM[dtype], N, 1, 1, 1, **kw),
                                      filled(1, N, 1, **kw), backend=name(backend))
    assert y.item() == expected(dtype)


def within_one_ulp(got: torch.Tensor, want: torch.Tensor, dtype) -> bool:
    """``got`` (half) within one unit in the last place of ``dtype`` of ``want`` (float64)."""
    ulp = torch.exp2(torch.floor(torch.log2(want.abs())) - MANTISSA[dtype])
    return bool(((got.cpu().double() - want.cpu()).abs() <= ulp).all())


@pytest.mark.parametrize("backend,dtype", CASES)
def test_random_sums_are_within_one_unit_in_the_last_place(backend, dtype):
    gen = torch.Generator().manual_seed(0)

    def positive(*shape):  # in [0.5, 1): no cancellation
        values = (0.5 + 0.5 * torch.rand(shape, generator=gen, dtype=torch.float64)).to(dtype)
        return values.to(device(backend)).requires_grad_()

    # forward: 3 positions (one shared bank on conv) of 4 channels x 25 taps
    x, w = positive(4, 4, 27), positive(1 if backend == "conv" else 3, 2, 4, 25)
    want = UF.locally_connected1d(x.double(), w.double().expand(3, -1, -1, -1), backend="torch")
    assert within_one_ulp(lc(x, w, backend, positions=3 if backend == "conv" else 1), want, dtype)
    # weight gradient over a batch of N (one position), input gradient over N output channels
    x, w, gy = positive(N, 2, 1), positive(1, 3, 2, 1), positive(N, 3, 1)
    lc(x, w, backend).backward(gy)
    assert within_one_ulp(w.grad, (gy.double()[..., 0].T @ x.double()[..., 0]).view(1, 3, 2, 1), dtype)
    x, w, gy = positive(2, 2, 1), positive(1, N, 2, 1), positive(2, N, 1)
    lc(x, w, backend).backward(gy)
    assert within_one_ulp(x.grad, (gy.double()[..., 0] @ w.double()[0, :, :, 0]).unsqueeze(-1), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("backend", ["torch", "conv", "composite"])
def test_cpu_autocast_sums_in_float32(backend, dtype):
    # under autocast the layer casts to the half type like nn.Conv; the sums stay float32
    x, w = torch.ones(N, 1, 1, requires_grad=True), torch.ones(1, 1, 1, 1, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        y = lc(x, w, backend)
    assert y.dtype == dtype
    y.backward(torch.full_like(y, TERM[dtype]))
    assert w.grad.dtype == torch.float32 and w.grad.item() == expected(dtype)
