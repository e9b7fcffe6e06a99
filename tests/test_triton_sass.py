"""What the compiled kernels are made of, read off their PTX and SASS without a GPU (the variants
of ``tests/test_triton_compile.py``, compiled with the launcher's arguments for DeepFace L4 at
batch 256 and a channel-poor genomics layer): the loads the layouts were chosen for are 16 bytes
wide, and half-precision outputs are rounded to nearest. A change that loses them fails here."""
import pytest

pytest.importorskip("triton", reason="Triton is not installed")

from test_triton_compile import compile_all, describe  # noqa: E402


def _select(op, **fields):
    found = [r for r in compile_all() if r["op"] == op and r["shape"] == "deepface-l4" and not r["small"]
             and all(r[k] == v for k, v in fields.items())]
    assert found, (op, fields)
    return found


@pytest.mark.parametrize("op", ["forward", "input_grad", "weight_grad"])
def test_kernel_major_tiles_load_16_bytes(op):
    # kernel-major weights: patches run over 16 channels (channel stride 1), the weight along its
    # reduction, output gradients along their channels (the weight gradient: along the batch);
    # every global load of the float32 and bfloat16 variants is then a 16-byte one
    for r in _select(op, kernel_major=True):
        if r["dtype"] in ("float32", "bfloat16") and r["shape"] == "deepface-l4":
            # (with banks, 8-byte loads read the int64 bank index)
            narrow = {k: v for k, v in r["loads"].items() if not k.endswith("16") and not (r["banks"] and k == "ld8")}
            assert r["loads16"] and r["sass_ldg128"], f"{describe(r)}: no 16-byte loads ({r['loads']})"
            if op != "input_grad" or r["dtype"] == "float32":
                assert not narrow, f"{describe(r)}: narrower loads {narrow}"


def test_patch_gathers_go_through_l1():
    # neighbouring positions' windows overlap: the forward's 16-byte patch gathers are cp.async.ca
    # (cached in L1, unlike the .cg that 16-byte copies default to)
    for r in _select("forward", kernel_major=True, dtype="float32"):
        assert r["loads"].get("ca16"), f"{describe(r)}: {r['loads']}"


@pytest.mark.parametrize("op", ["forward", "weight_grad"])
def test_channel_major_weights_read_batch_innermost_inputs_in_16_bytes(op):
    # a channel-major patch runs along the last spatial dimension (no aligned runs): the launcher
    # gives these kernels the input batch-innermost, so the patch gathers run along the batch
    for r in _select(op, kernel_major=False):
        assert r["loads16"] and r["sass_ldg128"], f"{describe(r)}: {r['loads']}"


def test_half_precision_outputs_round_to_nearest():
    for r in compile_all():
        if r["dtype"] == "bfloat16" and not (r["op"] == "weight_grad" and r["banks"]):  # banks: float32 sums
            assert r["cvt_rn_bf16"] and not r["cvt_rz_bf16"], describe(r)
