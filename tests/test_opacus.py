"""Opacus (differentially private SGD) on networks of every layer kind: its hooks, functorch and
ghost-clipping modes give the per-sample gradients, norms and clipped steps of a per-sample loop,
both with Opacus's own fallback for layers it does not know (``torch.func``: ``vmap(grad(...))``)
and with the grad and norm samplers of :func:`unshared.privacy.register_opacus`.
"""
import copy

import pytest
import torch
from torch import nn

opacus = pytest.importorskip("opacus", reason="opacus is not installed (pip install 'unshared[opacus]')")
from opacus import GradSampleModule, PrivacyEngine  # noqa: E402
from opacus.grad_sample import GradSampleModuleFastGradientClipping  # noqa: E402

import unshared  # noqa: E402
from layer_kinds import KINDS, make  # noqa: E402
from unshared.privacy import LAYERS, register_opacus  # noqa: E402

BATCH = 4


@pytest.fixture(params=["torch.func", "unshared"])
def samplers(request):
    """Opacus's fallback, or the samplers of register_opacus (Opacus's tables restored after)."""
    tables = [GradSampleModule.GRAD_SAMPLERS, GradSampleModuleFastGradientClipping.GRAD_SAMPLERS,
              GradSampleModuleFastGradientClipping.NORM_SAMPLERS]
    saved = [dict(table) for table in tables]
    if request.param == "unshared":
        register_opacus()
    registered = all(cls in table for cls in LAYERS for table in tables)
    assert registered == (request.param == "unshared")
    yield request.param
    for table, before in zip(tables, saved):
        table.clear()
        table.update(before)


def _network(kind):
    """The layer, then a linear read-out (Opacus needs a loss per sample)."""
    layer, inputs = make(kind)
    out = layer(inputs(1))
    torch.manual_seed(1)
    return nn.Sequential(layer, nn.Tanh(), nn.Flatten(), nn.Linear(out[0].numel(), 3)), inputs(BATCH)


def _per_sample_gradients(model, x, y, loss):
    """``{name: (N, *shape)}``: each sample's gradient of ``loss(model(x[i:i+1]), y[i:i+1])``."""
    grads = []
    for i in range(x.shape[0]):
        model.zero_grad()
        loss(model(x[i:i + 1]), y[i:i + 1]).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad()
    return {n: torch.stack([g[n] for g in grads]) for n in grads[0]}


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # the first layer's input needs no gradient
@pytest.mark.parametrize("mode", ["hooks", "functorch"])
@pytest.mark.parametrize("kind", KINDS)
def test_grad_sample_module_gives_the_per_sample_gradients_of_a_loop(kind, mode, samplers):
    model, x = _network(kind)
    y = torch.arange(BATCH) % 3
    loss = nn.CrossEntropyLoss(reduction="sum")
    want = _per_sample_gradients(model, x, y, loss)
    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="sum", force_functorch=mode == "functorch")
    loss(wrapped(x), y).backward()
    for name, p in wrapped._module.named_parameters():
        torch.testing.assert_close(p.grad_sample, want[name], rtol=1e-5, atol=1e-6, msg=name)
    wrapped._close()


@pytest.mark.filterwarnings("ignore:Full backward hook is firing", "ignore:Secure RNG turned off")
@pytest.mark.parametrize("mode", ["hooks", "functorch", "ghost"])
def test_a_dp_sgd_step_clips_each_sample_as_a_loop_does(mode, samplers):
    torch.manual_seed(0)
    base = nn.Sequential(  # plain, tiled and low-rank layers in a row
        unshared.LocallyConnected2d(2, 3, 3, padding=1, input_size=6), nn.ReLU(),
        unshared.TiledLocallyConnected2d(3, 3, 2, input_size=6, tile_size=2), nn.ReLU(),
        unshared.LowRankLocallyConnected2d(3, 2, 2, input_size=5, rank=2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x, y = torch.randn(6, 2, 6, 6), torch.arange(6) % 3
    max_norm = 0.5
    per_sample = _per_sample_gradients(base, x, y, nn.CrossEntropyLoss())
    norms = torch.cat([g.flatten(1) for g in per_sample.values()], 1).norm(dim=1)
    assert (norms > max_norm).all()  # every sample is clipped
    scale = (max_norm / (norms + 1e-6)).clamp(max=1)  # Opacus's clipping factor
    want = {n: -(scale.view(-1, *(1,) * (g.dim() - 1)) * g).sum(0) / x.shape[0] for n, g in per_sample.items()}

    model = copy.deepcopy(base)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=x.shape[0])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    extra = dict(criterion=nn.CrossEntropyLoss()) if mode == "ghost" else {}
    private = PrivacyEngine().make_private(module=model, optimizer=optimizer, data_loader=loader,
                                           noise_multiplier=0.0, max_grad_norm=max_norm, poisson_sampling=False,
                                           grad_sample_mode=mode, **extra)
    model, optimizer, loader = private[0], private[1], private[-1]
    criterion = private[2] if mode == "ghost" else nn.CrossEntropyLoss()
    for xb, yb in loader:
        optimizer.zero_grad()
        criterion(model(xb), yb).backward()
        optimizer.step()
    if mode == "ghost":
        torch.testing.assert_close(model.per_sample_gradient_norms, norms, rtol=1e-5, atol=1e-6)
    for name, p in model._module.named_parameters():
        torch.testing.assert_close(p.detach() - before[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
