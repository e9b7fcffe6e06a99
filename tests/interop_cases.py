"""Helpers for the unshared.interop tests: the stored fixtures and how to convert and run them.

Each tests/fixtures/*.npz (made by tests/fixtures/make_interop_fixtures.py) holds one layer of
another framework: its configuration (JSON), weights, an input ``x`` in that framework's layout
and its output ``y``.
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import torch
from torch import nn

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
