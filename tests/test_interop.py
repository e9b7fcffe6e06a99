"""unshared.interop against Keras, Flax and lax.

- Stored fixtures (tests/fixtures/*.npz, made by tests/fixtures/make_interop_fixtures.py): the
  stored config and weights converted without TensorFlow or JAX must reproduce the stored output.
- Live: when tf_keras / flax are importable, random layers of each kind are converted as objects
  and compared on random input (skipped otherwise).
- Errors name the offending value.
"""
from __future__ import annotations

import glob
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import unshared
from unshared import interop

FIXTURES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "fixtures", "*.npz")))
NAMES = [os.path.basename(f)[:-4] for f in FIXTURES]


def load(name):
    with np.load(os.path.join(os.path.dirname(__file__), "fixtures", name + ".npz")) as data:
        arrays = {k: data[k] for k in data.files}
    return json.loads(str(arrays.pop("config"))), arrays


def local_of(module):
    """The LocallyConnectedNd inside a converted module."""
    return module.local if isinstance(module, nn.Sequential) else module


def keras_convert(config, arrays, dtype=None, **kwargs):
    weights = [arrays[k] for k in ("w0", "w1") if k in arrays]
    last = config["data_format"] == "channels_last"
    x = arrays["x"]
    if "batch_input_shape" not in config and config["implementation"] != 2:
        kwargs["input_size"] = x.shape[1:-1] if last else x.shape[2:]
    return interop.from_keras(config, weights, dtype=dtype, **kwargs), last


def run(module, x, last, dtype):
    """``module`` on the framework's input ``x``, channels moved in and out when ``last``."""
    x = torch.from_numpy(x).to(dtype)
    y = module(x.movedim(-1, 1) if last else x)
    return y.movedim(1, -1) if last else y


def convert_fixture(name, dtype=None):
    """(converted module, the fixture's arrays, whether its input is channels-last)."""
    config, arrays = load(name)
    if name.startswith("keras"):
        module, last = keras_convert(config, arrays, dtype)
    elif name.startswith("flax"):
        config.pop("features"), config.pop("use_bias", None)
        module = interop.from_flax({k: arrays[k] for k in ("kernel", "bias") if k in arrays}, dtype=dtype,
                                   **config)
        last = True
    else:
        module = interop.from_lax(arrays["rhs"], dtype=dtype, **config)
        dn = config.get("dimension_numbers")
        last = dn is not None and dn[0].endswith("C")           # ("NHWC", "HWIO", "NHWC")
    return module, arrays, last


# ------------------------------------------------------------------------------------------------
# (a) stored fixtures, no TensorFlow / JAX needed
# ------------------------------------------------------------------------------------------------
def test_fixtures_present():
    kinds = {n.split("_")[0] for n in NAMES}
    assert kinds == {"keras", "flax", "lax"}, NAMES
    assert sum(os.path.getsize(f) for f in FIXTURES) < 100_000


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_fixture(name, dtype):
    module, arrays, last = convert_fixture(name, dtype)
    layer = local_of(module)
    assert isinstance(layer, (unshared.LocallyConnected1d, unshared.LocallyConnected2d))
    assert layer.weight.dtype == dtype
    y = run(module, arrays["x"], last, dtype)
    expected = torch.from_numpy(arrays["y"]).to(dtype)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


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


def test_converted_layer_trains():
    module, arrays, last = convert_fixture("keras_lc2d_impl3_last")
    y = run(module, arrays["x"], last, torch.float32)
    y.square().sum().backward()
    assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0


def test_no_framework_imported():
    code = ("import sys, unshared.interop as i; i.from_lax; "
            "bad = [m for m in ('tensorflow', 'tf_keras', 'keras', 'jax', 'flax') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


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
    config2, arrays2 = load("keras_lc2d_impl3_last")
    with pytest.raises(ValueError, match=r"implementation-3 kernel of shape \(480,\), got \(479,\)"):
        interop.from_keras(config2, [arrays2["w0"][:-1], arrays2["w1"]])
    config3, arrays3 = load("keras_lc2d_impl2_first")
    with pytest.raises(ValueError, match="implementation-2 kernel of shape"):
        interop.from_keras(config3, [arrays3["w0"][:, :, :, :, :2], arrays3["w1"]])


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


def test_error_flax_and_lax():
    config, arrays = load("flax_convlocal2d_valid_strided")
    kernel, bias = arrays["kernel"], arrays["bias"]
    with pytest.raises(ValueError, match=r"input_size is required with strides=\(2, 1\)"):
        interop.from_flax(kernel, bias, kernel_size=(3, 2), strides=(2, 1), padding="VALID")
    with pytest.raises(ValueError, match=r"in_channels \* 6, features\) for kernel_size=\(3, 2\), "
                                         r"got \(2, 4, 11, 2\)"):
        interop.from_flax(kernel[:, :, :11], bias, kernel_size=(3, 2), padding="VALID", input_size=(6, 5))
    with pytest.raises(ValueError, match=r"output grid of \(2, 4\).*gives \(4, 4\)"):
        interop.from_flax(kernel, bias, kernel_size=(3, 2), padding="VALID", input_size=(6, 5))
    with pytest.raises(ValueError, match=r"bias of shape \(2, 4, 2\), got \(4, 2\)"):
        interop.from_flax(kernel, bias[0], kernel_size=(3, 2), strides=(2, 1), padding="VALID",
                          input_size=(6, 5))
    with pytest.raises(ValueError, match="input_dilation=2"):
        interop.from_flax(kernel, kernel_size=(3, 2), padding="VALID", input_dilation=2, input_size=(6, 5))
    with pytest.raises(ValueError, match="unknown padding='MIRROR'"):
        interop.from_flax(kernel, kernel_size=(3, 2), padding="MIRROR", input_size=(6, 5))
    with pytest.raises(TypeError, match="floating point, got dtype=torch.int64"):
        interop.from_flax(kernel.astype(np.int64), kernel_size=(3, 2), strides=(2, 1), padding="VALID",
                          input_size=(6, 5))
    with pytest.raises(TypeError, match="kernel_size= is required"):
        interop.from_flax(kernel)
    with pytest.raises(ValueError, match=r"got keys \['weight'\]"):
        interop.from_flax({"weight": kernel}, kernel_size=(3, 2))
    with pytest.raises(ValueError, match="same order"):
        interop.from_lax(np.zeros((3, 4, 5, 12)), filter_shape=(2, 2),
                         dimension_numbers=("NCHW", "WHIO", "NCHW"))
    with pytest.raises(ValueError, match="lhs_dilation"):
        interop.from_lax(np.zeros((3, 12, 4, 5)), filter_shape=(2, 2), lhs_dilation=(2, 1))


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


# ------------------------------------------------------------------------------------------------
# (c) live JAX / Flax
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flax_linen():
    pytest.importorskip("jax", reason="JAX is not installed (live Flax tests)")
    return pytest.importorskip("flax.linen", reason="Flax is not installed (live Flax tests)")


FLAX_CASES = [
    # (kernel_size, input size, attributes)
    ((3,), (9,), {"padding": "VALID"}),
    ((2,), (8,), {"padding": "CAUSAL", "kernel_dilation": 2}),
    ((4,), (9,), {"padding": "SAME", "strides": 2}),
    ((3,), (8,), {"padding": "REFLECT", "use_bias": False}),
    ((3, 3), (6, 7), {}),                                           # Flax's default padding: SAME
    ((2, 2), (6, 7), {"padding": "SAME"}),
    ((3, 2), (7, 6), {"padding": "VALID", "strides": (2, 3)}),
    ((3, 3), (7, 8), {"padding": "SAME", "strides": 2}),
    ((2, 3), (6, 7), {"padding": "CIRCULAR", "kernel_dilation": (2, 1)}),
    ((3, 3), (6, 7), {"padding": "REFLECT", "strides": (1, 2)}),
    ((2, 2), (5, 6), {"padding": ((2, 1), (0, 1)), "use_bias": False}),
    ((2, 2), (5, 6), {"padding": 1}),
    ((2, 2, 2), (4, 5, 3), {"padding": "SAME"}),
]


@pytest.mark.parametrize("kernel_size, size, attrs", FLAX_CASES, ids=[str(i) for i in range(len(FLAX_CASES))])
def test_live_flax(flax_linen, kernel_size, size, attrs):
    import jax

    module = flax_linen.ConvLocal(3, kernel_size, **attrs)
    x = np.random.default_rng(1).standard_normal((2, *size, 2)).astype(np.float32)
    variables = module.init(jax.random.key(0), x)
    if attrs.get("use_bias", True):                                 # Flax's bias starts at zero
        variables = {"params": dict(variables["params"], bias=np.random.default_rng(2).standard_normal(
            variables["params"]["bias"].shape).astype(np.float32))}
    expected = np.array(module.apply(variables, x))
    converted = interop.from_flax(variables, module=module, input_size=size)
    local = local_of(converted)
    assert local.weight.shape[:len(size)] == expected.shape[1:-1]
    y = converted(torch.from_numpy(x).movedim(-1, 1)).movedim(1, -1)
    torch.testing.assert_close(y, torch.from_numpy(expected), atol=2e-5, rtol=1e-5)
    # the same from the attributes
    kw = {k: v for k, v in attrs.items() if k != "use_bias"}
    converted2 = interop.from_flax(variables["params"]["kernel"], variables["params"].get("bias"),
                                   kernel_size=kernel_size, input_size=size, **kw)
    torch.testing.assert_close(converted2(torch.from_numpy(x).movedim(-1, 1)).movedim(1, -1), y, atol=0, rtol=0)


def test_live_flax_mask_and_bfloat16(flax_linen):
    import jax
    import jax.numpy as jnp

    x = np.random.default_rng(3).standard_normal((2, 6, 7, 2)).astype(np.float32)
    mask = np.tril(np.ones((5, 6, 8, 3), np.float32))
    module = flax_linen.ConvLocal(3, (2, 2), padding="VALID", mask=mask)
    variables = module.init(jax.random.key(0), x)
    expected = np.array(module.apply(variables, x))
    converted = interop.from_flax(variables, module=module)         # stride 1: input size inferred
    y = converted(torch.from_numpy(x).movedim(-1, 1)).movedim(1, -1)
    torch.testing.assert_close(y, torch.from_numpy(expected), atol=2e-5, rtol=1e-5)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), variables["params"])
    converted = interop.from_flax(params, kernel_size=(2, 2), padding="VALID", mask=mask)
    assert converted.weight.dtype == torch.bfloat16


LAX_CASES = [
    # (lhs shape, dimension numbers, keyword arguments)
    ((2, 3, 7, 8), None, {"filter_shape": (3, 2), "window_strides": (2, 1), "padding": "VALID"}),
    ((2, 3, 7, 8), None, {"filter_shape": (2, 2), "window_strides": (1, 1), "padding": "SAME",
                          "rhs_dilation": (2, 1)}),
    ((2, 3, 7, 8), None, {"filter_shape": (2, 3), "window_strides": (2, 2), "padding": "SAME_LOWER"}),
    ((2, 3, 9), None, {"filter_shape": (3,), "window_strides": (2,), "padding": ((2, 1),)}),
    ((2, 7, 8, 3), ("NHWC", "HWIO", "NHWC"), {"filter_shape": (3, 3), "window_strides": (1, 2),
                                              "padding": "SAME"}),
    ((2, 3, 7, 8), ("NCHW", "IOHW", "NCHW"), {"filter_shape": (2, 2), "window_strides": (1, 1),
                                              "padding": "VALID"}),
    ((2, 3, 4, 5, 6), None, {"filter_shape": (2, 2, 3), "window_strides": (1, 2, 1), "padding": "SAME"}),
]


@pytest.mark.parametrize("lhs_shape, dn, kwargs", LAX_CASES, ids=[str(i) for i in range(len(LAX_CASES))])
def test_live_lax(flax_linen, lhs_shape, dn, kwargs):
    import jax

    nd = len(lhs_shape) - 2
    lhs_spec, rhs_spec, out_spec = dn or ("NC" + "DHW"[3 - nd:], "OI" + "DHW"[3 - nd:], "NC" + "DHW"[3 - nd:])
    rng = np.random.default_rng(4)
    lhs = rng.standard_normal(lhs_shape).astype(np.float32)
    channels = lhs_shape[lhs_spec.index("C")]
    # the output grid: a plain conv of the same geometry
    probe = [1] * (nd + 2)
    for axis, letter in enumerate(rhs_spec):
        probe[axis] = channels if letter == "I" else 1 if letter == "O" else \
            kwargs["filter_shape"][[c for c in rhs_spec if c not in "OI"].index(letter)]
    out = jax.eval_shape(lambda a, b: jax.lax.conv_general_dilated(
        a, b, kwargs["window_strides"], kwargs["padding"], rhs_dilation=kwargs.get("rhs_dilation"),
        dimension_numbers=dn), lhs, np.zeros(probe, np.float32)).shape
    sizes = {"O": 4, "I": channels * int(np.prod(kwargs["filter_shape"])),
             **{c: out[i] for i, c in enumerate(out_spec) if c not in "NC"}}
    rhs = rng.standard_normal([sizes[c] for c in rhs_spec]).astype(np.float32)
    expected = np.array(jax.lax.conv_general_dilated_local(lhs, rhs, dimension_numbers=dn, **kwargs))
    input_size = [lhs_shape[i] for i, c in enumerate(lhs_spec) if c not in "NC"]
    converted = interop.from_lax(rhs, dimension_numbers=dn, input_size=input_size, **kwargs)
    last = lhs_spec[-1] == "C"
    x = torch.from_numpy(lhs)
    y = converted(x.movedim(-1, 1) if last else x)
    y = y.movedim(1, -1) if last else y
    torch.testing.assert_close(y, torch.from_numpy(expected), atol=2e-5, rtol=1e-5)
