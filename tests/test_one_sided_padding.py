"""One-sided padding: ``padding`` per dimension as a ``(low, high)`` pair, and ``"causal"`` in 1d.

Every backend, every layer kind and every padding mode must give what ``F.pad`` followed by
``padding=0`` gives, forward and backward (the float64 reference on the explicitly padded input
decides); the transposed layers are the adjoint of the forward layer with the same padding; the
module keeps the padding as written (``extra_repr``, state dicts, lazy layers), ``to_conv`` refuses
what ``nn.Conv`` cannot express, and ``torch.export`` records it.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import unshared
import unshared.functional as UF
from reference import locally_connected_reference
from unshared.backends import cpu

try:
    import triton  # noqa: F401  (runs under TRITON_INTERPRET=1 without a GPU: conftest sets it)
    TRITON = True
except ImportError:
    TRITON = False

BACKENDS = ["auto", "torch", "composite", "unfold",
            pytest.param("cpu", marks=pytest.mark.skipif(not cpu.available_isas(), reason="kernels not built")),
            pytest.param("triton", marks=pytest.mark.skipif(not TRITON, reason="Triton is not installed"))]

#: id: (input_size, kernel_size, stride, dilation, padding as written, (low, high) per dimension)
CASES = {
    "1d-high": ((7,), (3,), (1,), (1,), ((0, 4),), ((0, 4),)),
    "1d-causal": ((6,), (3,), (1,), (2,), "causal", ((4, 0),)),
    "1d-strided": ((8,), (3,), (2,), (1,), [[2, 1]], ((2, 1),)),
    "2d-pairs": ((5, 4), (3, 2), (1, 1), (1, 1), ((1, 2), (0, 0)), ((1, 2), (0, 0))),
    "2d-mixed": ((4, 5), (2, 3), (2, 1), (1, 2), (1, (0, 3)), ((1, 1), (0, 3))),
    "3d-pairs": ((3, 4, 3), (2, 2, 2), (1, 2, 1), (1, 1, 1), ((1, 0), 1, (0, 2)), ((1, 0), (1, 1), (0, 2))),
}


def _flat(pairs):
    """``F.pad``'s order: the last dimension first."""
    return [p for pair in reversed(pairs) for p in pair]


def _padded(x, pairs, mode):
    return F.pad(x, _flat(pairs), mode="constant" if mode == "zeros" else mode)


def _tensors(case, groups=1, seed=0):
    size, kernel, stride, dilation, _, pairs = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    out = tuple((i + lo + hi - d * (k - 1) - 1) // s + 1
                for i, k, s, d, (lo, hi) in zip(size, kernel, stride, dilation, pairs))
    x = torch.randn(2, 2 * groups, *size, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(*out, 3 * groups, 2, *kernel, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3 * groups, *out, generator=gen, dtype=torch.float64, requires_grad=True)
    return x, w, b


def _check_against_padded_reference(case, backend, mode="zeros", groups=1):
    _, _, stride, dilation, padding, pairs = CASES[case]
    x, w, b = _tensors(case, groups)
    got = UF.locally_connected(x, w, b, stride, padding, dilation, groups, padding_mode=mode, backend=backend)
    want = locally_connected_reference(_padded(x, pairs, mode), w, b, stride, 0, dilation, groups)
    torch.testing.assert_close(got, want)
    gy = torch.randn_like(want)
    for g, h in zip(torch.autograd.grad(got, (x, w, b), gy), torch.autograd.grad(want, (x, w, b), gy)):
        torch.testing.assert_close(g, h)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_every_backend_equals_pad_then_no_padding(backend, case):
    _check_against_padded_reference(case, backend)


@pytest.mark.skipif(not cpu.available_isas(), reason="kernels not built")
@pytest.mark.parametrize("path", ["channels", "rows"])
@pytest.mark.parametrize("case", CASES)
def test_the_compiled_kernels_pad_by_bounds_on_each_path(monkeypatch, path, case):
    def refuse(*args, **kwargs):
        raise AssertionError("the cpu backend made a padded copy of the input with F.pad")

    monkeypatch.setattr(F, "pad", refuse)  # the reference pads after the call, with the patch undone
    with cpu.use_path(path):
        _, _, stride, dilation, padding, pairs = CASES[case]
        x, w, b = _tensors(case)
        got = UF.locally_connected(x, w, b, stride, padding, dilation, backend="cpu")
        gy = torch.randn_like(got)
        grads = torch.autograd.grad(got, (x, w, b), gy)
    monkeypatch.undo()
    want = locally_connected_reference(_padded(x, pairs, "zeros"), w, b, stride, 0, dilation)
    torch.testing.assert_close(got, want)
    for g, h in zip(grads, torch.autograd.grad(want, (x, w, b), gy)):
        torch.testing.assert_close(g, h)


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("case", CASES)
def test_padding_modes_equal_pad_then_no_padding(backend, mode, case):
    _check_against_padded_reference(case, backend, mode)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_groups(backend):
    _check_against_padded_reference("2d-mixed", backend, groups=2)


def test_the_output_size_follows_the_pairs():
    # deepGBLUP's LocalLinear: kernel 5 over n SNPs, padded k - 1 on the right: one output per SNP
    layer = unshared.LocallyConnected1d(1, 1, 5, padding=((0, 4),), input_size=50)
    assert layer.output_size == (50,) and layer.padding == ((0, 4),)
    causal = unshared.LocallyConnected1d(1, 1, 3, dilation=4, padding="causal", input_size=20)
    assert causal.output_size == (20,) and causal.padding == "causal"
    assert unshared.LocallyConnected1d(1, 1, 3, stride=2, padding="causal", input_size=9).output_size == (5,)
    layer = unshared.LocallyConnected2d(1, 1, 3, padding=((1, 2), 0), input_size=(6, 6))
    assert layer.output_size == (7, 4) and layer.padding == ((1, 2), 0)


def test_causal_output_depends_on_the_past_only():
    layer = unshared.LocallyConnected1d(2, 3, 4, dilation=2, padding="causal", input_size=12, dtype=torch.float64)
    x = torch.randn(1, 2, 12, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    (gx,) = torch.autograd.grad(y[0, :, 5].sum(), x)
    assert gx[0, :, 6:].abs().sum() == 0 and gx[0, :, 5].abs().sum() > 0


@pytest.mark.parametrize("build,error,match", [
    (lambda: unshared.LocallyConnected1d(2, 3, 5, padding=(0, 4), input_size=9), ValueError,
     r"^LocallyConnected1d: padding=\(0, 4\) is ambiguous in 1d: .* write padding=\(\(0, 4\),\)"),
    (lambda: unshared.LocallyConnected1d(2, 3, 5, padding=((0, -4),), input_size=9), ValueError,
     r"^LocallyConnected1d: padding must be non-negative, got padding=\(\(0, -4\),\)"),
    (lambda: unshared.LocallyConnected2d(2, 3, 3, padding=((0, 1),), input_size=9), ValueError,
     r"^LocallyConnected2d: padding must be an int, a tuple of 2 ints or \(low, high\) pairs, 'valid' or "
     r"'same', got \(\(0, 1\),\)"),
    (lambda: unshared.LocallyConnected2d(2, 3, 3, padding=((0, 1, 2), 0), input_size=9), ValueError,
     r"got \(\(0, 1, 2\), 0\)"),
    (lambda: unshared.LocallyConnected2d(2, 3, 3, padding="causal", input_size=9), ValueError,
     r"^LocallyConnected2d: padding='causal' is for 1d layers .* e\.g\. padding=\(\(2, 0\), \(2, 0\)\)"),
    (lambda: unshared.LocallyConnected3d(2, 3, 3, padding=((1.5, 0), 0, 0), input_size=9), ValueError,
     r"got \(\(1\.5, 0\), 0, 0\)"),
    (lambda: unshared.LazyLocallyConnected1d(3, 5, padding=(True, 0)), ValueError, r"^LazyLocallyConnected1d: "),
    (lambda: unshared.TiledLocallyConnected1d(2, 3, 5, padding="full", input_size=9, tile_size=2), ValueError,
     r"^TiledLocallyConnected1d: padding must be .*'valid', 'same' or 'causal', got 'full'"),
    (lambda: unshared.LowRankLocallyConnected1d(2, 3, 3, padding=None, input_size=9, rank=2), TypeError,
     r"^LowRankLocallyConnected1d: padding must be"),
    (lambda: unshared.LocallyConnected1d(2, 3, 5, padding=((0, 1),), input_size=2), ValueError,
     r"LocallyConnected1d\(2, 3, .*padding=\(\(0, 1\),\)\) at input_size=\(2,\): kernel larger than the padded"),
    pytest.param(
        lambda: UF.locally_connected1d(torch.randn(2, 2, 7), torch.randn(7, 3, 2, 5), padding=(0, 4)), ValueError,
        r"^locally_connected1d: padding=\(0, 4\) is ambiguous in 1d"),
    pytest.param(
        lambda: UF.locally_connected2d(torch.randn(2, 2, 7, 7), torch.randn(5, 5, 3, 2, 3, 3), padding="causal"),
        ValueError, r"^locally_connected2d: padding='causal' is for 1d layers"),
    (lambda: UF.locally_connected1d(torch.randn(2, 2, 7), torch.randn(7, 3, 2, 5), padding=(0, 4)), ValueError,
     r"padding=\(0, 4\) is ambiguous in 1d: .* write padding=\(\(0, 4\),\)"),
    (lambda: UF.locally_connected2d(torch.randn(2, 2, 7, 7), torch.randn(5, 5, 3, 2, 3, 3), padding="causal"),
     ValueError, r"padding='causal' is for 1d layers"),
    (lambda: UF.locally_connected1d(torch.randn(1, 2, 3), torch.randn(6, 3, 2, 3), padding=((0, 5),),
                                    padding_mode="reflect"), ValueError,
     r"padding_mode='reflect' needs padding < input size, got padding=\(\(0, 5\),\)"),
])
def test_bad_padding_is_refused_naming_the_value_and_the_layer(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_extra_repr_shows_the_padding_as_given():
    cases = [(unshared.LocallyConnected1d(2, 3, 5, padding=((0, 4),), input_size=9), "padding=((0, 4),)"),
             (unshared.LocallyConnected1d(2, 3, 5, padding="causal", input_size=9), "padding=causal"),
             (unshared.LocallyConnected2d(2, 3, 3, padding=(1, (0, 2)), input_size=9), "padding=(1, (0, 2))"),
             (unshared.LocallyConnectedTranspose1d(2, 3, 5, padding=((0, 4),), input_size=9), "padding=((0, 4),)")]
    for layer, shown in cases:
        assert f"stride=(1,{' 1' if layer.kernel_size[1:] else ''}), {shown}, input_size=" in repr(layer), repr(layer)


@pytest.mark.parametrize("padding", [((0, 4),), "causal"])
def test_state_dict_round_trip_and_lazy_layers(padding):
    torch.manual_seed(0)
    source = unshared.LocallyConnected1d(3, 4, 5, padding=padding, input_size=11, dtype=torch.float64)
    x = torch.randn(2, 3, 11, dtype=torch.float64)
    eager = unshared.LocallyConnected1d(3, 4, 5, padding=padding, input_size=11, dtype=torch.float64)
    eager.load_state_dict(source.state_dict())
    lazy = unshared.LazyLocallyConnected1d(4, 5, padding=padding, dtype=torch.float64)
    lazy.load_state_dict(source.state_dict())
    torch.testing.assert_close(lazy(x), source(x))
    assert repr(lazy) == repr(source) and lazy.output_size == source.output_size == (11,)
    torch.testing.assert_close(eager(x), source(x))
    inferred = unshared.LazyLocallyConnected1d(4, 5, padding=padding, dtype=torch.float64)
    inferred(x)
    assert inferred.output_size == (11,) and inferred.padding == source.padding


def _check_layer(layer, x, per_position_weight, per_position_bias):
    pairs = unshared._utils.normalize_padding(layer.padding, layer.kernel_size, layer.stride, layer.dilation)
    want = locally_connected_reference(_padded(x, pairs, layer.padding_mode), per_position_weight(),
                                       per_position_bias(), layer.stride, 0, layer.dilation, layer.groups)
    got = layer(x)
    torch.testing.assert_close(got, want)
    gy = torch.randn_like(want)
    params = [x] + list(layer.parameters())
    for g, h in zip(torch.autograd.grad(got, params, gy), torch.autograd.grad(want, params, gy)):
        torch.testing.assert_close(g, h)


@pytest.mark.parametrize("kind", ["tiled", "region"])
@pytest.mark.parametrize("backend", ["auto", "conv", "torch"])
def test_partially_shared_layers(kind, backend):
    make = unshared.TiledLocallyConnected2d if kind == "tiled" else unshared.RegionLocallyConnected2d
    grid = {"tile_size": 2} if kind == "tiled" else {"regions": (2, 3)}
    layer = make(2, 3, (3, 2), padding=((2, 0), (0, 3)), padding_mode="zeros", input_size=(5, 6),
                 dtype=torch.float64, backend=backend, **grid)
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    _check_layer(layer, x, layer.expanded_weight, layer.expanded_bias)


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("mode", ["zeros", "replicate"])
def test_low_rank_layers(backend, mode):
    layer = unshared.LowRankLocallyConnected1d(2, 3, 3, padding="causal", padding_mode=mode, input_size=9, rank=2,
                                               dtype=torch.float64, backend=backend)
    with torch.no_grad():
        layer.combining_logits[0].normal_()
    x = torch.randn(2, 2, 9, dtype=torch.float64, requires_grad=True)
    _check_layer(layer, x, layer.expanded_weight, lambda: layer.bias)


def _transpose_cases():
    """Transposed layers with one-sided padding: (input_size of the transposed layer = the forward
    layer's output grid, kernel_size, stride, dilation, padding as written, pairs, output_padding)."""
    return {"1d": ((5,), (3,), (2,), (1,), ((0, 2),), ((0, 2),), (1,)),
            "2d": ((3, 4), (2, 3), (1, 2), (2, 1), ((1, 0), 1), ((1, 0), (1, 1)), (0, 1)),
            "3d": ((2, 3, 2), (2, 2, 2), (1, 1, 2), (1, 1, 1), (0, (1, 0), (0, 1)), ((0, 0), (1, 0), (0, 1)),
                   (0, 0, 0))}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["1d", "2d", "3d"])
def test_transposed_layers_are_the_adjoint_with_the_same_padding(backend, case):
    grid, kernel, stride, dilation, padding, pairs, output_padding = _transpose_cases()[case]
    nd = len(grid)
    layer = getattr(unshared, f"LocallyConnectedTranspose{nd}d")(
        4, 3, kernel, stride, padding, output_padding, dilation=dilation, input_size=grid, dtype=torch.float64,
        backend=backend)
    out = tuple((i - 1) * s - lo - hi + d * (k - 1) + op + 1
                for i, k, s, d, (lo, hi), op in zip(grid, kernel, stride, dilation, pairs, output_padding))
    assert layer.output_size == out and layer.padding == padding
    z = torch.randn(2, 4, *grid, dtype=torch.float64, requires_grad=True)
    got = layer(z)
    # the adjoint: <forward(x), z> = <x, transposed(z)>, forward = F.pad then padding 0, same weight
    x = torch.zeros(2, 3, *out, dtype=torch.float64, requires_grad=True)
    forward = locally_connected_reference(_padded(x, pairs, "zeros"), layer.weight, None, stride, 0, dilation)
    assert forward.shape[2:] == grid
    (want,) = torch.autograd.grad((forward * z).sum(), x, create_graph=True)
    want = want + layer.bias.view(-1, *out)
    torch.testing.assert_close(got, want)
    gy = torch.randn_like(want)
    params = [z, layer.weight, layer.bias]
    for g, h in zip(torch.autograd.grad(got, params, gy), torch.autograd.grad(want, params, gy)):
        torch.testing.assert_close(g, h)


@pytest.mark.parametrize("build,match", [
    (lambda: unshared.LocallyConnectedTranspose1d(2, 3, 3, padding="causal", input_size=5),
     r"^LocallyConnectedTranspose1d: padding must be an int, a tuple of 1 ints or \(low, high\) pairs, got 'causal'"),
    (lambda: unshared.LocallyConnectedTranspose1d(2, 3, 3, padding=(0, 1), input_size=5),
     r"^LocallyConnectedTranspose1d: padding=\(0, 1\) is ambiguous in 1d: .*padding=\(\(0, 1\),\)"),
    (lambda: unshared.LocallyConnectedTranspose2d(2, 3, 3, padding=((0, -1), 0), input_size=5),
     r"padding must be non-negative, got padding=\(\(0, -1\), 0\)"),
    (lambda: unshared.LocallyConnectedTranspose1d(2, 3, 3, padding=((5, 3),), input_size=2),
     r"output size \(-4,\) is not positive"),
    pytest.param(
        lambda: UF.locally_connected_transpose1d(torch.randn(2, 3, 5), torch.randn(5, 3, 2, 3), padding="same"),
        r"^locally_connected_transpose1d: padding must be .*got 'same'"),
])
def test_transposed_padding_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("shared_bias", [False, True])
def test_transposed_lazy_unbatched_and_shared_bias(shared_bias):
    eager = unshared.LocallyConnectedTranspose1d(2, 3, 3, 2, ((0, 2),), 1, input_size=5, shared_bias=shared_bias,
                                                 dtype=torch.float64)
    lazy = unshared.LazyLocallyConnectedTranspose1d(3, 3, 2, ((0, 2),), 1, shared_bias=shared_bias,
                                                    dtype=torch.float64)
    z = torch.randn(2, 5, dtype=torch.float64)
    lazy(z)
    lazy.load_state_dict(eager.state_dict())
    assert lazy.output_size == eager.output_size == (10,) and repr(lazy) == repr(eager)
    want = unshared.LocallyConnectedTranspose1d(2, 3, 3, 2, 0, 1, input_size=5, shared_bias=shared_bias,
                                                bias=False, dtype=torch.float64)
    with torch.no_grad():
        want.weight.copy_(eager.weight)
    bias = eager.bias.view(-1, 1) if shared_bias else eager.bias
    torch.testing.assert_close(lazy(z), want(z)[:, :10] + bias)
    torch.testing.assert_close(eager(z[None])[0], lazy(z))


def test_functional_transposed_pairs():
    layer = unshared.LocallyConnectedTranspose1d(2, 3, 3, 2, ((1, 2),), 1, input_size=5, dtype=torch.float64)
    z = torch.randn(2, 2, 5, dtype=torch.float64)
    got = UF.locally_connected_transpose1d(z, layer.weight, layer.bias, 2, ((1, 2),), 1)
    torch.testing.assert_close(got, layer(z))


def test_to_conv_takes_symmetric_padding_and_refuses_one_sided():
    def shared(layer):
        first = (0,) * len(layer.kernel_size)  # every position takes the first one's filters and bias
        with torch.no_grad():
            layer.weight.copy_(layer.weight[first].expand_as(layer.weight))
            layer.bias.copy_(layer.bias[(slice(None), *first)].view(-1, *(1 for _ in first)).expand_as(layer.bias))
        return layer

    conv = unshared.to_conv(shared(unshared.LocallyConnected2d(2, 3, 3, padding=((1, 1), 2), input_size=6))).conv
    assert conv.padding == (1, 2)
    for padding in (((0, 4),), "causal"):
        layer = shared(unshared.LocallyConnected1d(2, 3, 5, padding=padding, input_size=9))
        with pytest.raises(ValueError, match=r"^to_conv: nn.Conv1d cannot express the one-sided padding=.* of this "
                                             r"LocallyConnected1d \(\(low, high\) = \(\(\d, \d\),\)\); pad the input"):
            unshared.to_conv(layer, reduce="mean")


def test_to_linear_with_one_sided_padding():
    layer = unshared.LocallyConnected2d(2, 3, (2, 3), padding=((1, 0), (0, 2)), padding_mode="circular",
                                        input_size=(3, 4), dtype=torch.float64)
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(unshared.to_linear(layer)(x.flatten(1)), layer(x).flatten(1))


@pytest.mark.parametrize("padding", [((0, 4),), "causal"])
def test_torch_export_records_the_padding(padding):
    layer = unshared.LocallyConnected1d(2, 3, 5, padding=padding, input_size=9, dtype=torch.float64)
    x = torch.randn(2, 2, 9, dtype=torch.float64)
    program = torch.export.export(copy.deepcopy(layer), (x,))
    torch.testing.assert_close(program.module()(x), layer(x))
    decomposed = program.run_decompositions(unshared.decompositions())
    assert not [n for n in decomposed.graph.nodes if n.op == "call_function" and "unshared" in str(n.target)]
    torch.testing.assert_close(decomposed.module()(x), layer(x))


@pytest.mark.parametrize("make,dynamo", [
    (lambda: unshared.LocallyConnected1d(2, 3, 4, padding="causal", dilation=2, input_size=11), False),
    (lambda: unshared.LocallyConnected2d(2, 3, 3, padding=((0, 2), (1, 0)), padding_mode="reflect",
                                         input_size=(6, 5)), False),
    # the TorchScript exporter cannot export a transposed 1d layer, even with padding=0: the dynamo one
    (lambda: unshared.LocallyConnectedTranspose1d(2, 3, 3, 2, ((0, 2),), 1, input_size=5), True),
], ids=["causal-1d", "reflect-2d", "transposed-1d"])
def test_onnx_export_keeps_the_padding(tmp_path, make, dynamo):
    pytest.importorskip("onnx", reason="onnx is not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    torch.manual_seed(0)
    layer = make().eval()
    x = torch.randn(2, layer.in_channels, *layer.input_size)
    path = str(tmp_path / "layer.onnx")
    if dynamo:
        torch.onnx.export(layer, (x,), dynamo=True).save(path)
    else:
        torch.onnx.export(layer, (x,), path, dynamo=False)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["1d-high", "1d-causal", "2d-pairs", "3d-pairs"])
def test_the_nd_functional_forms_take_pairs(case):
    _, _, stride, dilation, padding, pairs = CASES[case]
    x, w, b = _tensors(case)
    fn = getattr(UF, f"locally_connected{x.dim() - 2}d")
    with torch.no_grad():
        got = fn(x, w, b, stride, padding, dilation)
        torch.testing.assert_close(got, locally_connected_reference(_padded(x, pairs, "zeros"), w, b, stride, 0,
                                                                    dilation))
        torch.testing.assert_close(fn(x[0], w, b, stride, padding, dilation), got[0])  # unbatched
