"""DeepFace."""
import torch

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
