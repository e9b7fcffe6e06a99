"""Large CPU outputs and gradients come from a pool (issue 18): a training step reuses the memory of
the last step's once nothing holds it, and never writes over one that anything holds."""
import threading

import pytest
import torch

import unshared
from reference import locally_connected_reference
from unshared.backends import buffers, cpu, release_pooled_buffers, settings

pytestmark = pytest.mark.skipif(not cpu.available_isas(), reason="the compiled CPU kernels are not built")

SMALL_POOL = {"pooled_from_bytes": 8192}  # this test's 41 KiB weight gradients count as large, not its 3-6 KiB outputs and input gradients


def layer_and_input(seed=0):
    torch.manual_seed(seed)
    layer = unshared.LocallyConnected2d(4, 4, 3, input_size=8, backend="cpu", dtype=torch.float64)
    return layer, torch.randn(3, 4, 8, 8, dtype=torch.float64)


def reference_grad(layer, x):
    w = layer.weight.detach().clone().requires_grad_()
    locally_connected_reference(x, w, layer.bias.detach()).square().sum().backward()
    return w.grad


def step(layer, x):
    layer(x).square().sum().backward()
    return layer.weight.grad


@pytest.fixture(autouse=True)
def empty_pool():
    release_pooled_buffers()
    yield
    release_pooled_buffers()


def test_a_dropped_gradient_is_reused_and_right():
    layer, x = layer_and_input()
    with settings(**SMALL_POOL):
        first = step(layer, x).data_ptr()
        layer.zero_grad(set_to_none=True)
        second = step(layer, 2 * x)
    assert second.data_ptr() == first  # the same memory, already touched
    torch.testing.assert_close(second, reference_grad(layer, 2 * x))
    assert release_pooled_buffers() == layer.weight.numel() * 8


def test_a_held_gradient_is_never_written_over():
    layer, x = layer_and_input()
    with settings(**SMALL_POOL):
        kept = step(layer, x)
        kept_view = kept.select(0, 1)  # a view alone also holds the memory
        want = kept.clone()
        layer.weight.grad = None
        del kept
        again = step(layer, 3 * x)
        assert again.data_ptr() != kept_view.data_ptr() - kept_view.storage_offset() * 8
        torch.testing.assert_close(kept_view, want.select(0, 1), rtol=0, atol=0)
        torch.testing.assert_close(again, reference_grad(layer, 3 * x))


def test_accumulation_into_a_kept_gradient():
    layer, x = layer_and_input()
    with settings(**SMALL_POOL):
        step(layer, x)
        step(layer, x)  # param.grad is kept: the engine adds the second gradient to it
        torch.testing.assert_close(layer.weight.grad, 2 * reference_grad(layer, x))
        layer.zero_grad(set_to_none=False)
        step(layer, 2 * x)
        torch.testing.assert_close(layer.weight.grad, reference_grad(layer, 2 * x))


def test_autograd_grad_results_are_the_callers():
    layer, x = layer_and_input()
    with settings(**SMALL_POOL):
        grads = [torch.autograd.grad(layer(s * x).square().sum(), layer.weight)[0] for s in (1.0, 2.0, 3.0)]
    for s, got in zip((1.0, 2.0, 3.0), grads):  # all three alive at once: three buffers
        torch.testing.assert_close(got, reference_grad(layer, s * x))
    assert len({g.data_ptr() for g in grads}) == 3


def test_no_pool_below_the_size_or_when_disabled():
    layer, x = layer_and_input()
    step(layer, x)  # 41 KiB: below the default pooled_from_bytes
    assert release_pooled_buffers() == 0
    with settings(pooled_from_bytes=4096, pooled_bytes=0):
        step(layer, x)
    assert release_pooled_buffers() == 0


def test_the_pool_keeps_at_most_pooled_bytes():
    layer, x = layer_and_input()
    size = layer.weight.numel() * 8
    with settings(pooled_from_bytes=8192, pooled_bytes=2 * size):
        grads = [torch.autograd.grad(layer(x).sum(), layer.weight)[0] for _ in range(4)]
    assert release_pooled_buffers() == 2 * size and len(grads) == 4


def test_threads_training_at_once_get_their_own_right_gradients():  # a missing lock would rarely show here
    layers = [layer_and_input(seed)[0] for seed in range(4)]
    x = layer_and_input()[1]
    results, errors = {}, []

    def train(i):
        try:
            with settings(**SMALL_POOL):
                for _ in range(20):
                    layers[i].zero_grad(set_to_none=True)
                    results[i] = step(layers[i], x).clone()
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=train, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, layer in enumerate(layers):
        torch.testing.assert_close(results[i], reference_grad(layer, x))


def test_other_devices_and_small_buffers_are_plain():
    t = buffers.pooled_buffer((4, 4), dtype=torch.float32, device="meta")
    assert t.device.type == "meta" and release_pooled_buffers() == 0


def test_a_held_storage_object_keeps_its_memory():
    layer, x = layer_and_input()
    with settings(**SMALL_POOL):
        storage = step(layer, x).untyped_storage()  # the same Python object as the pool's own query
        want = layer.weight.grad.clone()
        layer.weight.grad = None
        again = step(layer, 3 * x)
    assert again.data_ptr() != storage.data_ptr()
    kept = torch.empty(0, dtype=torch.float64).set_(storage).view(-1)
    torch.testing.assert_close(kept, want.permute(0, 1, 2, 4, 5, 3).reshape(-1), rtol=0, atol=0)


def test_a_resized_buffer_leaves_the_pool(monkeypatch):
    # plain heap memory (huge-page mappings cannot be resized): no transparent huge pages, say
    monkeypatch.setattr(buffers, "empty_buffer", lambda shape, dtype=None, device=None: torch.empty(shape, dtype=dtype))
    with settings(pooled_from_bytes=4096):
        first = buffers.pooled_buffer((64, 64), dtype=torch.float32)
        first.untyped_storage().resize_(0)  # as FSDP frees a parameter's memory
        del first
        second = buffers.pooled_buffer((64, 64), dtype=torch.float32)
        second.fill_(1.0)  # real memory, not the emptied storage
    assert second.untyped_storage().nbytes() == 64 * 64 * 4 and release_pooled_buffers() == 64 * 64 * 4


def test_no_pool_in_inference_mode():
    with settings(pooled_from_bytes=4096), torch.inference_mode():
        buffers.pooled_buffer((64, 64), dtype=torch.float32)
    with settings(pooled_from_bytes=4096):
        t = buffers.pooled_buffer((64, 64), dtype=torch.float32)
    assert not t.is_inference() and release_pooled_buffers() == 64 * 64 * 4


ALL_POOLED = {"pooled_from_bytes": 1024}  # outputs and input gradients too


@pytest.mark.parametrize("channels_last", [False, True])
def test_outputs_and_input_gradients_are_reused_and_right(channels_last):
    layer, x = layer_and_input()
    x = x.to(memory_format=torch.channels_last) if channels_last else x
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    want_w = reference_grad(layer, x)
    with settings(**ALL_POOLED):
        for s in (1.0, 2.0):
            xs = (s * x).requires_grad_()
            y = layer(xs)
            assert y._base is None and y.is_contiguous(memory_format=fmt)
            pointers = [y.data_ptr()]
            torch.nn.functional.relu(y, inplace=True)  # an in-place op on the output: not a view made inside
            y.square().sum().backward()
            pointers.append(xs.grad.data_ptr())
            assert xs.grad.is_contiguous(memory_format=fmt)
            xr = (s * x).detach().requires_grad_()
            torch.nn.functional.relu(locally_connected_reference(xr, layer.weight.detach(), layer.bias.detach())
                                     ).square().sum().backward()
            torch.testing.assert_close(xs.grad, xr.grad)
            if s == 2.0:
                assert pointers == first  # the dropped output and input gradient of the last step
            first = pointers
            del y, xs
            layer.zero_grad(set_to_none=True)
    with settings(**ALL_POOLED):
        torch.testing.assert_close(step(layer, x), want_w)


def test_a_held_output_is_never_written_over():
    layer, x = layer_and_input()
    with settings(**ALL_POOLED), torch.no_grad():
        kept = layer(x)
        want = kept.clone()
        others = [layer(3 * x) for _ in range(3)]
    assert kept.data_ptr() not in {o.data_ptr() for o in others}
    torch.testing.assert_close(kept, want, rtol=0, atol=0)
    torch.testing.assert_close(others[-1], locally_connected_reference(3 * x, layer.weight, layer.bias))
