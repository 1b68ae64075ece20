"""spec.py (the op contract) is self-consistent; quant.py round-trips and packs as documented."""

import doctest

import pytest
import torch

from phm.trt_plugins import quant, spec


def test_ops_and_positions():
    lin, ffn = spec.OPS["PHMLinear"], spec.OPS["PHMFFN"]
    assert lin.input_names == ("x", "cores", "scales", "bias")
    assert ffn.input_names[spec.UP_CORES] == "up_cores" and ffn.input_names[spec.DOWN_BIAS] == "down_bias"
    for op in (lin, ffn):
        assert op.domain == "com.phm" and op.plugin_version == "1" and op.plugin_namespace == "phm"
        assert "plugin_version" not in op.fields and "plugin_namespace" not in op.fields
        assert {a.onnx_type for a in op.attributes} <= {"INT", "FLOATS", "STRING"}  # parser-mappable


def test_check_fields():
    ok = {"n": 2, "num_bases": 2, "bases": [1, 0, 0, 1, 0, -1, 1, 0]}
    spec.check_fields("PHMLinear", ok)
    spec.check_fields("PHMFFN", ok)
    for bad in ({"bases": [1.0]}, {"n": 3}, {"weight_format": "int3"}, {"weight_format": "int4"},
                {"activation": "tanh"}, {"colour": 1}):
        with pytest.raises(ValueError):
            spec.check_fields("PHMLinear", {**ok, **bad})
    with pytest.raises(ValueError):
        spec.check_fields("PHMFFN", {**ok, "mlp_type": "moe"})


def test_quant_doctests():
    assert doctest.testmod(quant).failed == 0


def test_int8_roundtrip():
    torch.manual_seed(0)
    cores = torch.randn(10, 3, 12)
    q, s = quant.quantize_cores_int8(cores)
    assert q.dtype == torch.int8 and s.shape == (10,) and int(q.abs().max()) == 127
    err = (quant.dequantize_cores_int8(q, s) - cores).abs()
    assert bool((err <= s[:, None, None] / 2 + 1e-7).all())


def test_int4_packing_is_low_nibble_first():
    q = torch.tensor([[1, -2, 7, -8]])
    packed = quant.pack_int4(q)
    assert packed.tolist() == [[(1 & 0xF) | ((-2 & 0xF) << 4) - 256, (7 | ((-8 & 0xF) << 4)) - 256]]
    assert quant.unpack_int4(packed).tolist() == q.tolist()


def test_int4_roundtrip_and_errors():
    torch.manual_seed(1)
    cores = torch.randn(4, 2, 16)
    packed, s = quant.quantize_cores_int4(cores, group_size=8)
    assert packed.shape == (4, 2, 8) and s.shape == (4, 2, 2)
    err = (quant.dequantize_cores_int4(packed, s, 8) - cores).abs()
    assert bool((err <= s.repeat_interleave(8, -1) / 2 + 1e-6).all())
    with pytest.raises(ValueError):
        quant.quantize_cores_int4(cores, group_size=6)
    with pytest.raises(ValueError):
        quant.quantize_cores_int8(torch.zeros(3, 3, dtype=torch.int8))


@pytest.mark.parametrize("case", __import__("golden.loader", fromlist=["golden_cases"]).golden_cases(),
                         ids=lambda c: c["name"])
def test_int4_golden_layout_and_torch_reference(case):
    """The golden INT4 set: quant's unpacking reads its bytes as documented (-8..7, low nibble first),
    and torch's phm_forward on the dequantised cores gives its output to fp32 rounding."""
    from phm.trainer.hypercomplex import phm_forward

    packed, scales, g = case["int4_cores"], case["int4_scales"], case["int4_group"]
    q = quant.unpack_int4(packed)
    assert q.shape[-1] == 2 * packed.shape[-1] and int(q.min()) >= -8 and int(q.max()) <= 7
    assert torch.equal(quant.pack_int4(q), packed)                      # packing is its exact inverse
    cores = quant.dequantize_cores_int4(packed, scales, g)
    y = phm_forward(case["x"].double(), cores.double(), case["bases"].double(),
                    None if case["bias_tensor"] is None else case["bias_tensor"].double())
    ref = case["y_int4"].double()
    assert float((y - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
