"""DeepFace, and the demo command end to end."""
import sys

import pytest
import torch

from unshared import cli
from unshared.models import DeepFace


def test_deepface_parameter_count_on_meta():
    model = DeepFace(device="meta")
    assert sum(p.numel() for p in model.parameters()) == 118_923_774
    l4 = model.trunk[5]
    assert l4.weight.numel() == 62_726_400 and l4.output_size == (55, 55)
    sizes = [m.output_size for m in model.trunk if hasattr(m, "output_size")]
    assert sizes == [(55, 55), (25, 25), (21, 21)]
    assert model(torch.empty(2, 3, 152, 152, device="meta")).shape == (2, 4030)


def test_deepface_forward_and_backward_on_cpu():
    torch.manual_seed(0)
    model = DeepFace(num_classes=10)
    x = torch.randn(2, 3, 152, 152)
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 7])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
    assert model.trunk[5].weight.grad.abs().sum() > 0  # L4 receives gradient
    assert model.features(x).shape == (2, 4096)


def test_demo_quick_end_to_end(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--epochs", "1", "--output", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for layer in ("fully connected", "locally connected", "tiled 2x2", "low-rank 4", "convolution"):
        assert out.count(layer) == 2  # one row per dataset
    assert "test accuracy" in out
    for name in ("accuracy_vs_parameters.png", "filters_digits.png", "filters_faces.png"):
        path = tmp_path / name
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_learns_digits():
    from unshared import demo
    results, _ = demo.run_demo(("digits",), seeds=1, epochs=3, progress=False)
    assert all(r.accuracy > 0.8 for r in results), [(r.layer, r.accuracy) for r in results]


def test_demo_missing_extra_says_which_pip_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails
    assert cli.main(["demo", "--quick", "--dataset", "digits", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "the demo needs scikit-learn: pip install 'unshared[demo]'" in err


@pytest.mark.parametrize("argv", [["demo", "--dataset", "cifar"], ["demo", "--seeds", "0"], ["bench"]])
def test_demo_and_bench_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err
