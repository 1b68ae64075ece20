"""Triton PHM kernels against the golden vectors and phm.trainer's phm_forward.

Every specialisation (gemv, decode, prefill, prefill_mixw) runs on every golden case, in fp32
(≤ 1e-5 relative to the output scale) and fp16 (≤ 1e-2); INT8 / INT4 cores are checked against the
float64 math on their dequantised values; masking edges by odd shapes and T around tile borders.
"""

import pytest
import torch
import torch.nn.functional as F
from golden.loader import golden_cases

from phm.trainer.hypercomplex import PHMLinear, basis_family, cores_from_stack, phm_forward
from phm.trt_plugins import quant, spec
from phm.trt_plugins.kernels import configs
from phm.trt_plugins.kernels.launch import phm_ffn, phm_gate_up, phm_linear

CASES = golden_cases()
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}
ACT_REF = {"none": lambda v: v, "silu": F.silu, "gelu": F.gelu,
           "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"), "relu": F.relu}


def all_configs(n):
    return {c.name: c for c in configs.configs_for(n)}


def rel_err(y, ref):
    ref = ref.double().cpu()
    return float((y.double().cpu() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def ref_linear(x, cores, bases, bias=None, activation="none"):
    """float64 math of phm.trainer on the (already rounded / dequantised) operands."""
    y = phm_forward(x.double().cpu(), cores.double().cpu(), bases.double().cpu(),
                    None if bias is None else bias.double().cpu())
    return ACT_REF[activation](y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_every_config(case, dtype, device):
    n = case["n"]
    cores = cores_from_stack(case["cores"])
    x, bias = case["x"], case["bias_tensor"]
    for name, cfg in all_configs(n).items():
        if cfg.mix_w and case["num_bases"] <= n and name != "prefill_mixw":
            continue
        y = phm_linear(x.to(device, dtype), cores.to(device, dtype), case["bases"].to(device),
                       None if bias is None else bias.to(device, dtype), config=cfg)
        assert y.dtype == dtype and y.shape == case["y"].shape
        err = rel_err(y, case["y"])   # against the float64 golden output itself
        assert err <= TOL[dtype], f"{case['name']} config={name}: rel err {err:.2e}"
        if dtype == torch.float16:    # and against the exact math on the fp16-rounded operands
            err = rel_err(y, ref_linear(x.to(dtype), cores.to(dtype), case["bases"],
                                        None if bias is None else bias.to(dtype)))
            assert err <= 2e-3, f"{case['name']} config={name}: rel err {err:.2e} (rounded operands)"


@pytest.mark.parametrize("n,num_bases", [(2, 1), (2, 2), (2, 3), (2, 4), (4, 2), (4, 5)])
@pytest.mark.parametrize("t", [1, 2, 15, 16, 17, 63, 65])
def test_odd_shapes_and_tile_edges(n, num_bases, t, device):
    # d_in/n = 37 and d_out/n = 19: neither divides any BLOCK_K / BLOCK_M, so every mask matters.
    torch.manual_seed(t * 31 + num_bases)
    k, m = 37, 19
    x = torch.randn(t, n * k)
    layer = PHMLinear(n * k, n * m, n=n, num_bases=num_bases)
    y = phm_linear(x.to(device), layer.cores.detach().to(device), layer.bases.to(device),
                   layer.bias.detach().to(device))
    with torch.no_grad():
        ref = layer.double()(x.double())
    assert rel_err(y, ref) <= TOL[torch.float32]


@pytest.mark.parametrize("t", [1, 300])
def test_long_sequence_and_leading_dims(t, device):
    torch.manual_seed(t)
    n, num_bases, k, m = 2, 2, 40, 24
    x = torch.randn(1, t, n * k)
    cores, bases = torch.randn(m, num_bases, k), basis_family(n, num_bases)
    y = phm_linear(x.to(device), cores.to(device), bases.to(device))
    assert y.shape == (1, t, n * m)
    assert rel_err(y, ref_linear(x, cores, bases)) <= TOL[torch.float32]


def test_strided_rows(device):
    torch.manual_seed(3)
    n, num_bases, k, m = 2, 3, 16, 8
    big = torch.randn(5, 3 * n * k)
    x = big[:, 8:8 + n * k]                 # row stride 96, columns contiguous: no copy needed
    cores, bases = torch.randn(m, num_bases, k), basis_family(n, num_bases)
    y = phm_linear(x.to(device), cores.to(device), bases.to(device))
    assert rel_err(y, ref_linear(x, cores, bases)) <= TOL[torch.float32]


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")   # σ(-large) in numpy → 0
@pytest.mark.parametrize("activation", spec.ACTIVATIONS)
def test_activations(activation, device):
    torch.manual_seed(5)
    n, num_bases, k, m = 2, 2, 24, 12
    x, cores, bias = torch.randn(3, n * k), torch.randn(m, num_bases, k), torch.randn(n * m)
    bases = basis_family(n, num_bases)
    y = phm_linear(x.to(device), cores.to(device), bases.to(device), bias.to(device),
                   activation=activation)
    assert rel_err(y, ref_linear(x, cores, bases, bias, activation)) <= TOL[torch.float32]


@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("n,num_bases", [(2, 1), (2, 2), (2, 3), (4, 4)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_quantized_every_config(fmt, n, num_bases, dtype, device):
    torch.manual_seed(num_bases + 10 * n)
    k, m, g = 48, 20, 16                    # int4: 3 groups per core row; m not a tile multiple
    cores = torch.randn(m, num_bases, k) * 0.1
    bias = torch.randn(n * m).to(dtype)
    bases = basis_family(n, num_bases)
    if fmt == "int8":
        q, s = quant.quantize_cores_int8(cores)
        deq = quant.dequantize_cores_int8(q, s)
    else:
        q, s = quant.quantize_cores_int4(cores, g)
        deq = quant.dequantize_cores_int4(q, s, g)
    for name, cfg in all_configs(n).items():
        t = 17 if cfg.block_t > 1 else 1
        x = torch.randn(t, n * k).to(dtype)
        y = phm_linear(x.to(device), q.to(device), bases.to(device), bias.to(device), s.to(device),
                       fmt, g if fmt == "int4" else 0, config=cfg)
        assert y.dtype == dtype
        err = rel_err(y, ref_linear(x, deq, bases, bias))
        assert err <= TOL[dtype], f"{fmt} {name}: {err:.2e}"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_int4_golden_every_config(case, device):
    """The golden INT4 cores (packed bytes, group scales) through every kernel specialisation, fp16
    activations: the golden float64 output, and the exact math on the fp16-rounded input."""
    g, bias = case["int4_group"], case["bias_tensor"]
    deq = quant.dequantize_cores_int4(case["int4_cores"], case["int4_scales"], g)
    x16 = case["x"].half()
    for name, cfg in all_configs(case["n"]).items():
        if cfg.mix_w and case["num_bases"] <= case["n"] and name != "prefill_mixw":
            continue
        y = phm_linear(x16.to(device), case["int4_cores"].to(device), case["bases"].to(device),
                       None if bias is None else bias.half().to(device), case["int4_scales"].to(device), "int4", g,
                       config=cfg)
        assert rel_err(y, case["y_int4"]) <= TOL[torch.float16], name
        exact = ref_linear(x16, deq, case["bases"], None if bias is None else bias.half())
        assert rel_err(y, exact) <= 2e-3, name


def test_quantized_matches_float_model_within_quant_error(device):
    torch.manual_seed(7)
    layer = PHMLinear(64, 48, n=2, num_bases=2)
    x = torch.randn(4, 64)
    with torch.no_grad():
        ref = layer(x)
    q, s = quant.quantize_cores_int8(layer.cores.detach())
    y8 = phm_linear(x.half().to(device), q.to(device), layer.bases.to(device),
                    layer.bias.detach().half().to(device), s.to(device), "int8")
    p, s4 = quant.quantize_cores_int4(layer.cores.detach(), 16)
    y4 = phm_linear(x.half().to(device), p.to(device), layer.bases.to(device),
                    layer.bias.detach().half().to(device), s4.to(device), "int4", 16)
    assert rel_err(y8, ref) < 0.02 and rel_err(y4, ref) < 0.2 and rel_err(y8, ref) < rel_err(y4, ref)


@pytest.mark.parametrize("mlp_type", ["swiglu", "plain"])
@pytest.mark.parametrize("fmt", ["float", "int8", "int4"])
@pytest.mark.parametrize("n,num_bases,t", [(2, 2, 1), (2, 3, 17), (4, 4, 5)])
def test_ffn(mlp_type, fmt, n, num_bases, t, device):
    torch.manual_seed(num_bases * 7 + t)
    k, f, g = 32, 40, 8
    dtype = torch.float32 if fmt == "float" else torch.float16
    bases = basis_family(n, num_bases)
    raw = {p: torch.randn(*shape) * 0.2 for p, shape in
           (("gate", (f, num_bases, k)), ("up", (f, num_bases, k)), ("down", (k, num_bases, f)))}
    biases = {"gate": torch.randn(n * f), "up": torch.randn(n * f), "down": torch.randn(n * k)}
    stored, scales, deq = {}, {}, {}
    for p, c in raw.items():
        if fmt == "float":
            stored[p], scales[p], deq[p] = c.to(dtype), None, c.to(dtype)
        elif fmt == "int8":
            stored[p], scales[p] = quant.quantize_cores_int8(c)
            deq[p] = quant.dequantize_cores_int8(stored[p], scales[p])
        else:
            stored[p], scales[p] = quant.quantize_cores_int4(c, g)
            deq[p] = quant.dequantize_cores_int4(stored[p], scales[p], g)
    x = torch.randn(t, n * k).to(dtype)
    dev = {p: v.to(device) for p, v in stored.items()}
    sc = {p: None if v is None else v.to(device) for p, v in scales.items()}
    bi = {p: v.to(device, dtype) for p, v in biases.items()}
    y = phm_ffn(x.to(device), bases.to(device), dev["up"], dev["down"],
                dev["gate"] if mlp_type == "swiglu" else None, bi["gate"], bi["up"], bi["down"],
                sc["gate"], sc["up"], sc["down"], fmt, g if fmt == "int4" else 0,
                activation="gelu_tanh" if mlp_type == "plain" else "silu", mlp_type=mlp_type)
    bd = {p: v.to(dtype) for p, v in biases.items()}
    if mlp_type == "swiglu":
        h = F.silu(ref_linear(x, deq["gate"], bases, bd["gate"])) * ref_linear(x, deq["up"], bases, bd["up"])
    else:
        h = ref_linear(x, deq["up"], bases, bd["up"], "gelu_tanh")
    ref = ref_linear(h.to(dtype), deq["down"], bases, bd["down"])   # kernel stores h in x's dtype
    assert rel_err(y, ref) <= TOL[dtype]


def test_gate_up_every_config(device):
    torch.manual_seed(11)
    n, num_bases, k, f = 2, 3, 24, 20
    bases = basis_family(n, num_bases)
    gc, uc = torch.randn(f, num_bases, k), torch.randn(f, num_bases, k)
    for name, cfg in all_configs(n).items():
        t = 1 if cfg.block_t == 1 else 19
        x = torch.randn(t, n * k)
        h = phm_gate_up(x.to(device), gc.to(device), uc.to(device), bases.to(device),
                        activation="gelu", config=cfg)
        ref = F.gelu(ref_linear(x, gc, bases)) * ref_linear(x, uc, bases)
        assert rel_err(h, ref) <= TOL[torch.float32], name


def test_bad_inputs_are_value_errors(device):
    bases = basis_family(2, 2).to(device)
    x = torch.randn(2, 16, device=device)
    cores = torch.randn(4, 2, 8, device=device)
    with pytest.raises(ValueError):
        phm_linear(torch.randn(2, 15, device=device), cores, bases)
    with pytest.raises(ValueError):
        phm_linear(x, cores.half(), bases)
    with pytest.raises(ValueError):
        phm_linear(x, cores, bases, activation="tanh")
    with pytest.raises(ValueError):
        phm_linear(x.half(), cores.to(torch.int8), bases, weight_format="int8")   # no scales
    with pytest.raises(ValueError):
        q, s = quant.quantize_cores_int4(cores.cpu(), 8)
        phm_linear(x.half(), q.to(device), bases, scales=s.to(device), weight_format="int4", group_size=4)


def test_empty_batch(device):
    y = phm_linear(torch.randn(0, 16, device=device), torch.randn(4, 2, 8, device=device),
                   basis_family(2, 2).to(device))
    assert y.shape == (0, 8)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["float", "int8", "int4"])
@pytest.mark.parametrize("num_bases", [1, 2, 3, 4])
@pytest.mark.parametrize("t", [1, 7, 16, 17, 256, 2048, 4096])
def test_gpu_native_large(fmt, num_bases, t):
    """Natively on a GPU (JIT): realistic widths, T up to 4096, every regime and precision."""
    torch.manual_seed(t + num_bases)
    n, k, m, g = 2, 512, 1024, 128
    bases = basis_family(n, num_bases).cuda()
    cores = torch.randn(m, num_bases, k, device="cuda") * 0.05
    bias = torch.randn(n * m, device="cuda").half()
    x = torch.randn(t, n * k, device="cuda").half()
    if fmt == "float":
        stored, scales, deq = cores.half(), None, cores.half()
    elif fmt == "int8":
        stored, scales = quant.quantize_cores_int8(cores)
        deq = quant.dequantize_cores_int8(stored, scales)
    else:
        stored, scales = quant.quantize_cores_int4(cores, g)
        deq = quant.dequantize_cores_int4(stored, scales, g)
    y = phm_linear(x, stored, bases, bias, scales, fmt, g if fmt == "int4" else 0, activation="silu")
    assert rel_err(y, ref_linear(x, deq, bases, bias, "silu")) <= TOL[torch.float16]
    gc, uc = cores.half(), (cores * 0.5).half()
    if fmt == "float":
        h = phm_gate_up(x, gc, uc, bases)
        ref = F.silu(ref_linear(x, gc, bases)) * ref_linear(x, uc, bases)
        assert rel_err(h, ref) <= TOL[torch.float16]
