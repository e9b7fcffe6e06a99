"""unshared.interop.from_keras against tf-keras LocallyConnected1D/2D.

- Stored fixtures (keras_*.npz): Keras-specific readings (serialized forms, padding, activation).
- Errors name the offending value.
- Live: when tf_keras is importable, random layers of each kind are converted as objects and
  compared on random input (skipped otherwise).
"""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

from interop_cases import NAMES, keras_convert, load, local_of, run
from unshared import interop


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("keras")])
def test_fixture_default_dtype_is_the_kernels(name):
    config, arrays = load(name)
    module, _ = keras_convert(config, arrays)
    assert local_of(module).weight.dtype == torch.from_numpy(arrays["w0"]).dtype


@pytest.mark.parametrize("name", [n for n in NAMES if "impl2" in n])
def test_keras_impl2_ignores_unconnected_entries(name):
    """Keras multiplies the dense kernel by its mask: what lies outside it must not matter."""
    config, arrays = load(name)
    kernel = arrays["w0"].copy()
    outside = kernel == 0          # the fixtures store the masked kernel; random entries are never 0
    kernel[outside] = np.random.default_rng(0).standard_normal(int(outside.sum()))
    module, last = keras_convert(config, dict(arrays, w0=kernel))
    y = run(module, arrays["x"], last, torch.from_numpy(arrays["x"]).dtype)
    torch.testing.assert_close(y, torch.from_numpy(arrays["y"]), atol=1e-5, rtol=1e-5)


def test_keras_serialized_form_and_weight_dict():
    """``{"class_name", "config", "build_config"}`` (model.to_json()) and ``{"kernel", "bias"}`` work."""
    config, arrays = load("keras_lc2d_impl1_first")
    x = arrays["x"]
    serialized = {"class_name": "LocallyConnected2D", "config": config,
                  "build_config": {"input_shape": [None, *x.shape[1:]]}}
    module = interop.from_keras(serialized, {"kernel": arrays["w0"], "bias": arrays["w1"]})
    torch.testing.assert_close(module(torch.from_numpy(x)), torch.from_numpy(arrays["y"]))


def test_keras_uneven_same_padding_is_a_pad_module():
    config, arrays = load("keras_lc2d_impl2_last_same")     # kernel 2: one row above, none below
    module, _ = keras_convert(config, arrays)
    assert isinstance(module.pad, nn.ZeroPad2d) and module.pad.padding == (1, 0, 1, 0)
    assert module.local.input_size == (5, 6) and module.local.output_size == (4, 5)


def test_keras_activation_is_appended():
    config, arrays = load("keras_lc2d_impl1_last_relu")
    module, _ = keras_convert(config, arrays)
    assert list(dict(module.named_children())) == ["local", "activation"]
    assert isinstance(module.activation, nn.ReLU)


# ------------------------------------------------------------------------------------------------
# (d) errors
# ------------------------------------------------------------------------------------------------
class FakeKerasLayer:
    def __init__(self, config, weights):
        self.config, self.weights = config, weights

    def get_config(self):
        return self.config

    def get_weights(self):
        return self.weights


class Conv2D(FakeKerasLayer):
    pass


class LocallyConnected2D(FakeKerasLayer):
    pass


def test_error_wrong_layer_type():
    config, arrays = load("keras_lc2d_impl1_last")
    with pytest.raises(TypeError, match="got Conv2D"):
        interop.from_keras(Conv2D(config, [arrays["w0"], arrays["w1"]]))
    with pytest.raises(ValueError, match="class_name='Conv2D'"):
        interop.from_keras({"class_name": "Conv2D", "config": config}, [arrays["w0"], arrays["w1"]])
    with pytest.raises(TypeError, match="got int"):
        interop.from_keras(3)
    with pytest.raises(ValueError, match="no 'kernel_size'"):
        interop.from_keras({"units": 3}, [arrays["w0"]])


def test_duck_typed_layer_object():
    config, arrays = load("keras_lc2d_impl1_last")
    module = interop.from_keras(LocallyConnected2D(config, [arrays["w0"], arrays["w1"]]))
    y = run(module, arrays["x"], True, torch.float32)
    torch.testing.assert_close(y, torch.from_numpy(arrays["y"]))
    with pytest.raises(ValueError, match="not built"):
        interop.from_keras(LocallyConnected2D(config, []))


def test_error_bad_weights():
    config, arrays = load("keras_lc2d_impl1_last")
    w0, w1 = arrays["w0"], arrays["w1"]
    with pytest.raises(ValueError, match=r"implementation-1 kernel of shape \(20, 12, 2\), got \(19, 12, 2\) "
                                         r"\(input size \(5, 6\), 3 input channels\)"):
        interop.from_keras(config, [w0[:19], w1])
    with pytest.raises(ValueError, match=r"kernel of shape \(20, 12, 2\), got \(20, 8, 2\)"):
        interop.from_keras(config, [w0[:, :8], w1])          # 2 channels, the config says 3
    with pytest.raises(ValueError, match=r"bias of shape \(4, 5, 2\), got \(5, 4, 2\)"):
        interop.from_keras(config, [w0, w1.reshape(5, 4, 2)])
    with pytest.raises(ValueError, match="expected 2 weight arrays .* got 1"):
        interop.from_keras(config, [w0])
    with pytest.raises(TypeError, match="needs its weights"):
        interop.from_keras(config)
    config2, arrays2 = load("keras_lc2d_impl3_last")
    with pytest.raises(ValueError, match=r"implementation-3 kernel of shape \(480,\), got \(479,\)"):
        interop.from_keras(config2, [arrays2["w0"][:-1], arrays2["w1"]])
    with pytest.raises(ValueError, match=r"implementation-3 kernel of shape \(160 \* in_channels,\) for input "
                                         r"size \(5, 6\), got \(479,\)"):
        config2 = {k: v for k, v in config2.items() if k != "batch_input_shape"}
        interop.from_keras(config2, [arrays2["w0"][:-1], arrays2["w1"]], input_size=(5, 6))
    with pytest.raises(ValueError, match=r"implementation-1 kernel of shape \(20, 4 \* in_channels, 2\) for "
                                         r"input size \(5, 6\), got \(19, 12, 2\)"):
        interop.from_keras({k: v for k, v in config.items() if k != "batch_input_shape"}, [w0[:19], w1],
                           input_size=(5, 6))
    config3, arrays3 = load("keras_lc2d_impl2_first")
    with pytest.raises(ValueError, match="implementation-2 kernel of shape"):
        interop.from_keras(config3, [arrays3["w0"][:, :, :, :, :2], arrays3["w1"]])


def test_error_non_positive_settings():
    """A zero or negative stride or kernel size, and an input smaller than the kernel, are named."""
    config, arrays = load("keras_lc2d_impl1_last")          # kernel (2, 2), input (5, 6)
    weights = [arrays["w0"], arrays["w1"]]
    with pytest.raises(ValueError, match=r"strides must be positive, got strides=\(0, 1\)"):
        interop.from_keras(dict(config, strides=(0, 1)), weights)
    with pytest.raises(ValueError, match=r"strides must be positive, got strides=\(-1, -1\)"):
        interop.from_keras(dict(config, strides=-1), weights)
    with pytest.raises(ValueError, match=r"kernel_size must be positive, got kernel_size=\(0, 2\)"):
        interop.from_keras(dict(config, kernel_size=(0, 2)), weights)
    with pytest.raises(ValueError, match=r"'locally_connected2d'\): kernel larger than the padded input: "
                                         r"kernel_size=\(2, 2\).* input_size=\(1, 1\)"):
        interop.from_keras(dict(config, batch_input_shape=[None, 1, 1, 3]), weights)
    no_shape = {k: v for k, v in config.items() if k != "batch_input_shape"}
    with pytest.raises(ValueError, match=r"input_size must be positive, got input_size=\(0, 6\)"):
        interop.from_keras(no_shape, weights, input_size=(0, 6))
    with pytest.raises(TypeError, match="input_size must be an int or a tuple of 2 ints, got 'ab'"):
        interop.from_keras(no_shape, weights, input_size="ab")


def test_config_numbers_from_numpy():
    """Configs built by hand with numpy values (and a numpy input size) read as plain ints."""
    config, arrays = load("keras_lc2d_impl1_last")
    config = {k: v for k, v in config.items() if k != "batch_input_shape"}
    config.update(kernel_size=np.array(config["kernel_size"]), strides=np.int64(1))
    x = arrays["x"]
    module = interop.from_keras(config, [arrays["w0"], arrays["w1"]], input_size=np.array(x.shape[1:-1]))
    torch.testing.assert_close(run(module, x, True, torch.float32), torch.from_numpy(arrays["y"]))


def test_error_unsupported_activation():
    config, arrays = load("keras_lc2d_impl1_last")
    with pytest.raises(ValueError, match="unsupported activation 'hard_sigmoid'"):
        interop.from_keras(dict(config, activation="hard_sigmoid"), [arrays["w0"], arrays["w1"]])


def test_error_input_size():
    config, arrays = load("keras_lc2d_impl1_first")           # stored without batch_input_shape
    weights = [arrays["w0"], arrays["w1"]]
    with pytest.raises(ValueError, match="input size is unknown.*pass input_size="):
        interop.from_keras(config, weights)
    with pytest.raises(ValueError, match=r"\(25, 4 \* in_channels, 2\) for input size \(6, 6\), "
                                         r"got \(20, 12, 2\)"):
        interop.from_keras(config, weights, input_size=(6, 6))
    config2, arrays2 = load("keras_lc2d_impl1_last")          # with batch_input_shape (5, 6)
    with pytest.raises(ValueError, match=r"input_size says input size \(6, 6\) but the config's"):
        interop.from_keras(config2, [arrays2["w0"], arrays2["w1"]], input_size=(6, 6))


def test_error_keras_settings():
    config, arrays = load("keras_lc2d_impl1_last")
    weights = [arrays["w0"], arrays["w1"]]
    with pytest.raises(ValueError, match="implementation=4"):
        interop.from_keras(dict(config, implementation=4), weights)
    with pytest.raises(ValueError, match="padding='same' with implementation=1"):
        interop.from_keras(dict(config, padding="same"), weights)
    with pytest.raises(ValueError, match="data_format='channels_middle'"):
        interop.from_keras(dict(config, data_format="channels_middle"), weights)


# ------------------------------------------------------------------------------------------------
# (b) live Keras
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tf_keras():
    pytest.importorskip("tensorflow", reason="TensorFlow is not installed (live Keras tests)")
    return pytest.importorskip("tf_keras", reason="tf_keras is not installed (live Keras tests)")


def keras_cases():
    for nd, impl, fmt in itertools.product((1, 2), (1, 2, 3), ("channels_last", "channels_first")):
        paddings = ("valid",) if impl == 1 else ("valid", "same")
        settings = ((1, True), (2, False), ((3, 2)[:nd], True))           # (strides, use_bias)
        for padding, (strides, bias) in itertools.product(paddings, settings):
            yield pytest.param(nd, impl, fmt, padding, strides, bias,
                               id=f"{nd}d-impl{impl}-{fmt}-{padding}-s{strides}-{'bias' if bias else 'nobias'}")


def keras_run(tf_keras, nd, impl, fmt, padding, strides, bias, *, kernel=None, activation=None,
              channels=3, size=(6, 7), dtype="float32", seed=0, input_shape=False):
    rng = np.random.default_rng(seed)
    kernel = kernel or (3, 2)[:nd]
    size = size[:nd] if nd == 2 else size[1:]
    cls = tf_keras.layers.LocallyConnected2D if nd == 2 else tf_keras.layers.LocallyConnected1D
    shape = (*size, channels) if fmt == "channels_last" else (channels, *size)
    extra = {"input_shape": shape} if input_shape else {}
    layer = cls(4, kernel, strides=strides, padding=padding, data_format=fmt, activation=activation,
                use_bias=bias, implementation=impl, dtype=dtype, **extra)
    x = rng.standard_normal((2, *shape)).astype(dtype)
    layer(x)
    layer.set_weights([rng.standard_normal(w.shape).astype(dtype) for w in layer.get_weights()])
    return layer, x, layer(x).numpy()


@pytest.mark.parametrize("nd, impl, fmt, padding, strides, bias", list(keras_cases()))
def test_live_keras(tf_keras, nd, impl, fmt, padding, strides, bias):
    layer, x, expected = keras_run(tf_keras, nd, impl, fmt, padding, strides, bias,
                                   kernel=(2, 3)[:nd] if padding == "same" else None)
    module = interop.from_keras(layer)
    last = fmt == "channels_last"
    y = run(module, x, last, torch.float32)
    torch.testing.assert_close(y, torch.from_numpy(expected), atol=2e-5, rtol=1e-5)
    # the same from the config and weights alone (no input shape in the config: pass input_size)
    config = layer.get_config()
    x_size = x.shape[1:-1] if last else x.shape[2:]
    module2 = interop.from_keras(config, layer.get_weights(), input_size=tuple(x_size))
    torch.testing.assert_close(run(module2, x, last, torch.float32), y, atol=0, rtol=0)


@pytest.mark.parametrize("activation", ["linear", "relu", "relu6", "leaky_relu", "tanh", "sigmoid", "softmax",
                                        "log_softmax", "elu", "selu", "softplus", "softsign", "swish", "silu",
                                        "gelu", "mish"])
@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
def test_live_keras_activations(tf_keras, activation, fmt):
    layer, x, expected = keras_run(tf_keras, 2, 1, fmt, "valid", 1, True, activation=activation,
                                   input_shape=True)
    module = interop.from_keras(layer)
    y = run(module, x, fmt == "channels_last", torch.float32)
    torch.testing.assert_close(y, torch.from_numpy(expected), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", [1, 2, 3])
def test_live_keras_float64_and_json(tf_keras, impl):
    layer, x, expected = keras_run(tf_keras, 2, impl, "channels_last", "valid", 1, True, dtype="float64",
                                   input_shape=True)
    config = json.loads(json.dumps(layer.get_config()))          # what a saved model holds
    module = interop.from_keras(config, layer.get_weights())
    assert module.weight.dtype == torch.float64
    y = run(module, x, True, torch.float64)
    torch.testing.assert_close(y, torch.from_numpy(expected), atol=1e-12, rtol=1e-12)
    model = tf_keras.Sequential([layer])
    serialized = json.loads(model.to_json())["config"]["layers"][-1]
    module2 = interop.from_keras(serialized, layer.get_weights())
    torch.testing.assert_close(run(module2, x, True, torch.float64), y)


def test_live_keras_unsupported_activation(tf_keras):
    layer, _, _ = keras_run(tf_keras, 2, 1, "channels_last", "valid", 1, True, activation="hard_sigmoid")
    with pytest.raises(ValueError, match="unsupported activation 'hard_sigmoid'"):
        interop.from_keras(layer)
    with pytest.raises(TypeError, match="got Conv2D"):
        interop.from_keras(tf_keras.layers.Conv2D(2, 3))
