"""unshared.interop.from_flax and from_lax against flax.linen.ConvLocal and
jax.lax.conv_general_dilated_local.

- Errors name the offending value (the stored fixtures are checked in tests/test_interop.py).
- Live: when JAX and Flax are importable, random layers and kernels are converted and compared
  on random input (skipped otherwise).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from interop_cases import load, local_of
from unshared import interop


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



def test_error_flax_and_lax_non_positive():
    """Zero strides, dilations or kernel sizes (once ZeroDivisionError) and too small inputs are named."""
    config, arrays = load("flax_convlocal2d_valid_strided")
    kernel = arrays["kernel"]                                   # kernel_size (3, 2), input (6, 5)
    settings = {"kernel_size": (3, 2), "padding": "VALID", "input_size": (6, 5)}
    with pytest.raises(ValueError, match=r"strides must be positive, got strides=\(0, 0\)"):
        interop.from_flax(kernel, **dict(settings, strides=0))
    with pytest.raises(ValueError, match=r"kernel_dilation must be positive, got kernel_dilation=\(0, 1\)"):
        interop.from_flax(kernel, **dict(settings, strides=(2, 1), kernel_dilation=(0, 1)))
    with pytest.raises(ValueError, match=r"kernel_size must be positive, got kernel_size=\(3, 0\)"):
        interop.from_flax(kernel, **dict(settings, kernel_size=(3, 0)))
    with pytest.raises(ValueError, match=r"from_flax: kernel larger than the padded input"):
        interop.from_flax(kernel, **dict(settings, strides=(2, 1), input_size=(1, 1)))
    rhs = np.zeros((3, 12, 4, 5))
    with pytest.raises(ValueError, match=r"window_strides must be positive, got window_strides=\(0, 1\)"):
        interop.from_lax(rhs, filter_shape=(2, 2), window_strides=(0, 1), input_size=(5, 6))
    with pytest.raises(ValueError, match=r"filter_shape must be an int or a tuple of 2 ints, got \(2.5, 2\)"):
        interop.from_lax(rhs, filter_shape=(2.5, 2))

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
