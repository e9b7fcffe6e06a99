"""ONNX export: networks with locally connected layers run in onnxruntime with PyTorch's outputs.

While ``torch.onnx.export`` traces, ``backend="auto"`` computes with the composite backend
(standard operators: slices and einsums), which ONNX can express.
"""
import pytest
import torch
from torch import nn

pytest.importorskip("onnx", reason="onnx is not installed (pip install 'unshared[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'unshared[onnx]')")

import unshared  # noqa: E402
from conftest import CPU_AUTO  # noqa: E402


def _network():
    torch.manual_seed(0)
    return nn.Sequential(
        unshared.LocallyConnected2d(3, 4, 3, stride=2, padding=1, input_size=(9, 8)), nn.ReLU(),
        unshared.TiledLocallyConnected2d(4, 4, 2, groups=2, padding=1, padding_mode="reflect",
                                         input_size=(5, 4), tile_size=(2, 3)), nn.ReLU(),
        unshared.LocallyConnected2d(4, 2, 2, dilation=2, shared_bias=True, input_size=(6, 5)),
        nn.Flatten(), nn.Linear(2 * 4 * 3, 5)).eval()


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def test_dynamo_export_runs_in_onnxruntime_with_a_dynamic_batch(tmp_path):
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    net = _network()
    x = torch.randn(2, 3, 9, 8)
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(net, (x,), dynamo=True, dynamic_shapes=({0: batch},))
    program.save(str(tmp_path / "net.onnx"))
    for n in (2, 5):
        x = torch.randn(n, 3, 9, 8)
        with torch.no_grad():
            torch.testing.assert_close(_run(tmp_path / "net.onnx", x), net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("nd", [1, 3])
def test_torchscript_export_1d_and_3d(tmp_path, nd):
    cls = {1: unshared.LocallyConnected1d, 3: unshared.LocallyConnected3d}[nd]
    size = {1: (11,), 3: (4, 5, 3)}[nd]
    torch.manual_seed(1)
    layer = cls(2, 3, 2, padding=1, padding_mode="circular", input_size=size).eval()
    x = torch.randn(2, 2, *size)
    torch.onnx.export(layer, (x,), str(tmp_path / "layer.onnx"), dynamo=False)
    with torch.no_grad():
        torch.testing.assert_close(_run(tmp_path / "layer.onnx", x), layer(x), rtol=1e-4, atol=1e-5)


def test_export_uses_the_composite_backend_only_while_exporting():
    from unshared.backends import choose_backend
    from unshared._utils import Geometry

    g = Geometry((5,), (3,), (3,), (1,), ((0, 0),), (1,), 1, 2, 4)
    x, w = torch.randn(1, 2, 5), torch.randn(3, 4, 2, 3)
    assert choose_backend(x, w, g) == CPU_AUTO
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(choose_backend(x, w, g))
            return x + 1

    torch.onnx.export(Probe().eval(), (x,), dynamo=True)
    assert seen and set(seen) == {"composite"}
