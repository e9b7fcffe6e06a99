"""SparselyConnected against a dense masked float64 reference: the three connectivity forms,
channels 1->1 and 3->2, empty rows and columns, both computing paths (the compiled CPU kernels and
standard operators), gradcheck in every mode, bad connectivity refused, and the tracers
(torch.compile, torch.export, torch.func, ONNX)."""
import contextlib

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from unshared.sparse import (
    SparselyConnected,
    decompositions,
    kernels,
    sparsely_connected,
)
from unshared.sparse import connectivity as K

BACKENDS = ["torch"] + (["cpu"] if kernels.can_run_compiled(torch.ones(1), torch.ones(1)) is None else [])


def reference(x, weight, pairs, bias, in_features, out_features):
    """``x`` ``(N, C, in)`` times the dense ``(in, out, O, C)`` matrix that is zero off the pairs."""
    dense = torch.zeros(in_features, out_features, *weight.shape[1:], dtype=torch.float64)
    dense = dense.index_put((pairs[0], pairs[1]), weight.double())
    y = torch.einsum("nci,ijoc->noj", x.double(), dense)
    return y if bias is None else y + bias.double()


def random_pairs(in_features, out_features, nnz, seed):
    """Unique random pairs in a random order, leaving input 1 and output 0 unconnected."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(in_features, out_features, generator=g) < nnz / (in_features * out_features)
    mask[1, :] = False
    mask[:, 0] = False
    pairs = mask.nonzero().t()
    return pairs[:, torch.randperm(pairs.shape[1], generator=g)], mask


def each_isa(backend):
    """Yields once per instruction set of the compiled kernels (inside ``cpu.use_isa``) for
    ``backend="cpu"``, once otherwise."""
    from unshared.backends import cpu
    for isa in cpu.available_isas() if backend == "cpu" else [None]:
        with cpu.use_isa(isa) if isa else contextlib.nullcontext():
            yield isa


def as_form(pairs, mask, form):
    if form == "pairs":
        return pairs
    if form == "mask":
        return mask
    sparse = pytest.importorskip("scipy.sparse")
    return sparse.coo_matrix((torch.ones(pairs.shape[1]).numpy(), (pairs[0].numpy(), pairs[1].numpy())),
                             shape=tuple(mask.shape)).tocsr()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels", [(1, 1), (3, 2)])
@pytest.mark.parametrize("form", ["pairs", "mask", "scipy"])
def test_matches_dense_masked_reference(form, channels, backend):
    in_c, out_c = channels
    pairs, mask = random_pairs(37, 11, 60, seed=len(form) + in_c)
    layer = SparselyConnected(37, 11, as_form(pairs, mask, form), in_channels=in_c, out_channels=out_c,
                              dtype=torch.float64)
    assert layer.nnz == int(mask.sum()) and layer.weight.shape == (layer.nnz, out_c, in_c)
    assert layer.bias.shape == (out_c, 11)
    assert torch.equal(K.sort_pairs(pairs, 37), layer.connectivity)
    x = torch.randn(5, in_c, 37, dtype=torch.float64, requires_grad=True)
    y = sparsely_connected(x, layer.weight, layer.connectivity, layer.bias, 11, backend=backend)
    want = reference(x, layer.weight, layer.connectivity, layer.bias, 37, 11)
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(y[:, :, 0], layer.bias[:, 0].expand(5, out_c))  # output 0: bias only
    gy = torch.randn_like(y)
    sources = (x, layer.weight, layer.bias)
    got = torch.autograd.grad(y, sources, gy)
    for a, b in zip(got, torch.autograd.grad(want, sources, gy)):
        torch.testing.assert_close(a, b)
    assert not got[0][:, :, 1].any()  # input 1 feeds nothing


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsorted_pairs_in_the_functional_form(backend):
    pairs, _ = random_pairs(23, 9, 40, seed=3)
    w = torch.randn(pairs.shape[1], 2, 3, dtype=torch.float64)
    x = torch.randn(4, 3, 23, dtype=torch.float64)
    torch.testing.assert_close(sparsely_connected(x, w, pairs, out_features=9, backend=backend),
                               reference(x, w, pairs, None, 23, 9))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_lower_precision_matches_reference(dtype, tol):
    pairs, _ = random_pairs(300, 40, 900, seed=5)
    w, x = torch.randn(pairs.shape[1], 2, 2), torch.randn(3, 2, 300)
    want = reference(x.to(dtype), w.to(dtype), pairs, None, 300, 40)
    for backend in ("auto", "torch"):
        y = sparsely_connected(x.to(dtype), w.to(dtype), pairs, out_features=40, backend=backend)
        assert y.dtype == dtype
        torch.testing.assert_close(y.double(), want, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels,batch", [((2, 2), 3), ((3, 6), 9)])
def test_long_runs_several_tiles_and_blocks(backend, channels, batch):
    """Gene-like connectivity (contiguous SNP runs, overlaps), past a tile of outputs and a block of
    inputs; 6 output channels: a block of 4 and two single ones in the compiled kernels, whose
    tiles of 4 samples leave one over at batch 9. The compiled kernels run on every instruction set."""
    n_in, n_out = 2 * K.BLOCK + 77, 600
    gene = torch.arange(n_in) * n_out // n_in
    extra = torch.arange(0, n_in, 7)
    pairs = torch.cat([torch.stack([torch.arange(n_in), gene]),
                       torch.stack([extra, (gene[extra] + 1).clamp(max=n_out - 1)])], 1).unique(dim=1)
    pairs = pairs[:, pairs[1] != 5]  # an empty output between tiles
    layer = SparselyConnected(n_in, n_out, pairs, in_channels=channels[0], out_channels=channels[1],
                              dtype=torch.float64)
    x = torch.randn(batch, channels[0], n_in, dtype=torch.float64, requires_grad=True)
    want = reference(x, layer.weight, layer.connectivity, None, n_in, n_out)
    gy = torch.randn_like(want)
    wanted = torch.autograd.grad(want, (x, layer.weight), gy)
    for _ in each_isa(backend):
        y = sparsely_connected(x, layer.weight, layer.connectivity, None, n_out, backend=backend)
        torch.testing.assert_close(y, want)
        for a, b in zip(torch.autograd.grad(y, (x, layer.weight), gy), wanted):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_run_across_several_blocks_of_inputs(backend, dtype):
    """One output fed by every input (a run 2.5 blocks long, its input gradient added block by
    block), beside single connections that start inside it. Rows of 5,120 inputs: the compiled
    input gradient writes whole aligned 64-byte lines of them (streaming stores on x86-64)."""
    n_in = 2 * K.BLOCK + K.BLOCK // 2
    pairs = torch.cat([torch.stack([torch.arange(n_in), torch.zeros(n_in, dtype=torch.int64)]),
                       torch.tensor([[5, K.BLOCK + 3, n_in - 1], [1, 2, 1]])], 1)
    w = torch.randn(pairs.shape[1], 2, 1, dtype=dtype, requires_grad=True)
    x = torch.randn(5, 1, n_in, dtype=dtype, requires_grad=True)
    want = reference(x, w, pairs, None, n_in, 3)
    gy = torch.randn_like(want)
    wanted = torch.autograd.grad(want, (x, w), gy)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}  # float32: sums of 5,120 products
    for _ in each_isa(backend):
        y = sparsely_connected(x, w, pairs, None, 3, backend=backend)
        torch.testing.assert_close(y, want.to(dtype), **tol)
        for a, b in zip(torch.autograd.grad(y, (x, w), gy.to(dtype)), wanted):
            torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_in_every_mode(backend):
    pairs, _ = random_pairs(9, 5, 14, seed=7)
    w = torch.randn(pairs.shape[1], 2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return sparsely_connected(x, w, pairs, b, 5, backend=backend)
    assert gradcheck(f, (x, w, b), check_batched_grad=True, check_forward_ad=True, check_backward_ad=True,
                     check_batched_forward_grad=True)
    assert gradgradcheck(f, (x, w, b), check_batched_grad=True)


def test_forward_mode_tangents_equal_the_reference():
    import torch.autograd.forward_ad as fwAD
    pairs, _ = random_pairs(13, 6, 20, seed=9)
    x, tx = torch.randn(3, 2, 13, dtype=torch.float64), torch.randn(3, 2, 13, dtype=torch.float64)
    w, tw = torch.randn(pairs.shape[1], 1, 2, dtype=torch.float64), torch.randn(pairs.shape[1], 1, 2, dtype=torch.float64)
    with fwAD.dual_level():
        y = sparsely_connected(fwAD.make_dual(x, tx), fwAD.make_dual(w, tw), pairs, out_features=6)
        tangent = fwAD.unpack_dual(y).tangent
    want = reference(tx, w, pairs, None, 13, 6) + reference(x, tw, pairs, None, 13, 6)
    torch.testing.assert_close(tangent, want)


def test_shapes_like_linear_unbatched_and_empty_batch():
    layer = SparselyConnected(6, 3, torch.tensor([[0, 1, 5], [0, 2, 2]]))
    assert layer(torch.randn(4, 6)).shape == (4, 3)
    assert layer(torch.randn(6)).shape == (3,)
    assert layer(torch.randn(0, 6)).shape == (0, 3)
    channels = SparselyConnected(6, 3, torch.tensor([[0, 1, 5], [0, 2, 2]]), in_channels=2, out_channels=4)
    assert channels(torch.randn(4, 2, 6)).shape == (4, 4, 3)
    assert channels(torch.randn(2, 6)).shape == (4, 3)
    with pytest.raises(ValueError, match=r"expected input \(N, 2, 6\)"):
        channels(torch.randn(4, 3, 6))
    with pytest.raises(ValueError, match=r"expected input \(\.\.\., 6\) with in_features=6 last, got shape \(4, 5\)"):
        layer(torch.randn(4, 5))
    empty = SparselyConnected(4, 2, torch.zeros(2, 0, dtype=torch.long))
    torch.testing.assert_close(empty(torch.randn(3, 4)), empty.bias.expand(3, 2))


def test_init_follows_each_outputs_fan_in():
    torch.manual_seed(0)
    pairs = torch.stack([torch.arange(400), torch.cat([torch.zeros(4), torch.ones(396)]).long()])
    layer = SparselyConnected(400, 3, pairs, in_channels=2)
    bound = layer.fan_in().double().clamp(min=1).rsqrt()
    assert torch.equal(layer.fan_in(), torch.tensor([8, 792, 0]))
    w = layer.weight.detach()
    assert (w[layer.connectivity[1] == 0].abs() <= bound[0]).all() and w[layer.connectivity[1] == 0].abs().max() > 0.2
    assert (w[layer.connectivity[1] == 1].abs() <= bound[1]).all()
    assert layer.bias[0, 2] == 0 and layer.bias[0, 0].abs() <= bound[0]
    before = layer.weight.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.weight)


def test_extra_repr_device_dtype_and_state_dict():
    pairs = torch.tensor([[0, 2], [1, 0]])
    assert repr(SparselyConnected(3, 2, pairs)) == "SparselyConnected(in_features=3, out_features=2, nnz=2)"
    layer = SparselyConnected(3, 2, pairs, in_channels=2, out_channels=5, bias=False, dtype=torch.float64)
    assert "in_channels=2, out_channels=5, bias=False" in repr(layer) and layer.bias is None
    assert layer.weight.dtype == torch.float64
    meta = SparselyConnected(3, 2, pairs, device="meta")
    assert meta.weight.is_meta and meta.connectivity.is_meta
    copy = SparselyConnected(3, 2, pairs, in_channels=2, out_channels=5, bias=False, dtype=torch.float64)
    copy.load_state_dict(layer.state_dict())
    assert torch.equal(copy.weight, layer.weight)
    state = layer.state_dict()
    state["connectivity"] = torch.tensor([[0, 0], [1, 1]])
    with pytest.raises(ValueError, match="repeats connection 0"):
        copy.load_state_dict(state)


@pytest.mark.parametrize("connectivity,error,match", [
    (torch.tensor([[0, 1, 0], [1, 1, 1]]), ValueError, r"connection 2, \(input 0, output 1\), repeats connection 0"),
    (torch.tensor([[0, 5], [1, 1]]), ValueError, r"connection 1, \(input 5, output 1\), is out of range"),
    (torch.tensor([[0, 1], [-1, 1]]), ValueError, r"connection 0, \(input 0, output -1\), is out of range"),
    (torch.tensor([[0, 1], [0, 3]]), ValueError, r"connection 1, \(input 1, output 3\), is out of range"),
    (torch.tensor([[0.0, 1.0], [0.0, 1.0]]), TypeError, "must be an integer tensor"),
    (torch.tensor([[0, 1, 2]]), ValueError, r"shape \(2, nnz\)"),
    (torch.zeros(4, 3, dtype=torch.bool), ValueError, r"boolean mask must have shape \(in_features, out_features\)"),
    ([[0, 1], [0, 1]], TypeError, "connectivity must be"),
])
def test_bad_connectivity_is_refused(connectivity, error, match):
    with pytest.raises(error, match=match):
        SparselyConnected(5, 3, connectivity)


def test_functional_checks():
    pairs = torch.tensor([[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="2 pairs but the weight 3 filters"):
        sparsely_connected(torch.randn(2, 4), torch.randn(3, 1, 1), pairs)
    with pytest.raises(ValueError, match=r"repeats connection 0"):
        sparsely_connected(torch.randn(2, 4), torch.randn(2, 1, 1), torch.tensor([[0, 0], [1, 1]]))
    with pytest.raises(ValueError, match=r"bias must have shape"):
        sparsely_connected(torch.randn(2, 4), torch.randn(2, 1, 1), pairs, torch.randn(3))
    with pytest.raises(ValueError, match="backend must be one of"):
        sparsely_connected(torch.randn(2, 4), torch.randn(2, 1, 1), pairs, backend="cuda")
    with pytest.raises(TypeError, match="must have one dtype"):
        sparsely_connected(torch.randn(2, 4), torch.randn(2, 1, 1, dtype=torch.float64), pairs)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the compiled CPU kernels are not built")
def test_the_compiled_kernels_refuse_a_plan_that_lies():
    pairs = torch.tensor([[0, 1, 2], [0, 0, 1]])
    x, w = torch.randn(2, 1, 3), torch.randn(3, 1, 1)
    for field in ("runs", "slots"):
        for bad in (-1, 7, 1 << 62):
            plan = K.plan(pairs, 3, 2)
            table = getattr(plan, field)
            saved = table.clone()
            table[0, 0] = bad
            with pytest.raises(ValueError, match="refused"):
                kernels.input_grad(torch.randn(2, 1, 2), w, pairs, 3, 2, "cpu")
            table.copy_(saved)
    torch.testing.assert_close(kernels.forward(x, w, pairs, 3, 2, "cpu"), kernels.forward(x, w, pairs, 3, 2, "torch"))


def _layer():
    torch.manual_seed(0)
    pairs, _ = random_pairs(30, 8, 45, seed=11)
    return SparselyConnected(30, 8, pairs, in_channels=2, out_channels=3), torch.randn(5, 2, 30)


def test_compile_fullgraph_and_export_with_decompositions():
    layer, x = _layer()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    xg = x.clone().requires_grad_()
    compiled(xg).square().sum().backward()
    xe = x.clone().requires_grad_()
    layer(xe).square().sum().backward()
    torch.testing.assert_close(xg.grad, xe.grad)
    program = torch.export.export(layer, (x,))
    torch.testing.assert_close(program.module()(x), layer(x))
    program = program.run_decompositions(decompositions())
    assert not any("unshared" in str(node.target) for node in program.graph.nodes)
    torch.testing.assert_close(program.module()(x), layer(x))


def test_torch_func_per_sample_gradients_vmap_and_jvp():
    from torch.func import functional_call, grad, jvp, vmap
    layer, x = _layer()
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(p, sample):
        return functional_call(layer, p, (sample.unsqueeze(0),)).square().sum()
    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for i in range(x.shape[0]):
        want = torch.autograd.grad(layer(x[i:i + 1]).square().sum(), layer.weight)[0]
        torch.testing.assert_close(per_sample["weight"][i], want)
    torch.testing.assert_close(vmap(layer)(x.unsqueeze(1)).squeeze(1), layer(x))
    t = torch.randn_like(x)
    _, tangent = jvp(layer, (x,), (t,))
    torch.testing.assert_close(tangent, layer(t) - layer.bias, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_export_runs_in_onnxruntime(tmp_path, dynamo):
    pytest.importorskip("onnx", reason="onnx is not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    layer, x = _layer()
    layer.eval()
    path = str(tmp_path / "sparse.onnx")
    if dynamo:
        torch.onnx.export(layer, (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},)).save(path)
    else:
        torch.onnx.export(layer, (x,), path, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = torch.randn(7, 2, 30)
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    layer, x = _layer()
    x = x.double().requires_grad_()
    layer = layer.double()
    cuda = SparselyConnected(30, 8, layer.connectivity, in_channels=2, out_channels=3, device="cuda",
                             dtype=torch.float64)
    cuda.load_state_dict(layer.state_dict())
    xc = x.detach().cuda().requires_grad_()
    torch.testing.assert_close(cuda(xc).cpu(), layer(x))
    cuda(xc).sum().backward()
    layer(x).sum().backward()
    torch.testing.assert_close(xc.grad.cpu(), x.grad)
    torch.testing.assert_close(cuda.weight.grad.cpu(), layer.weight.grad)
