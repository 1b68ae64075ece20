"""torch custom ops phm::phm_linear / phm::phm_ffn: real math on CPU (vs phm.trainer), fake
tensors for export, gradients for float cores; on a GPU the same calls run the Triton kernels."""

import pytest
import torch

from phm.trainer.hypercomplex import PHMLinear, basis_family, phm_forward
from phm.trt_plugins import quant, torch_ops  # noqa: F401  (registers torch.ops.phm.*)


def test_linear_cpu_matches_trainer():
    torch.manual_seed(0)
    layer = PHMLinear(24, 16, n=2, num_bases=3)
    x = torch.randn(2, 5, 24)
    y = torch.ops.phm.phm_linear(x, layer.cores, layer.bases, layer.bias, None, "float", 0, "none")
    torch.testing.assert_close(y, layer(x), rtol=1e-5, atol=1e-6)
    assert y.abs().sum() > 0


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_linear_quantized_cpu(fmt):
    torch.manual_seed(1)
    cores, bases = torch.randn(8, 2, 16), basis_family(2, 2)
    if fmt == "int8":
        q, s = quant.quantize_cores_int8(cores)
        deq = quant.dequantize_cores_int8(q, s)
    else:
        q, s = quant.quantize_cores_int4(cores, 8)
        deq = quant.dequantize_cores_int4(q, s, 8)
    x = torch.randn(3, 32)
    y = torch.ops.phm.phm_linear(x, q, bases, None, s, fmt, 8 if fmt == "int4" else 0, "relu")
    torch.testing.assert_close(y, torch.relu(phm_forward(x, deq, bases)), rtol=1e-5, atol=1e-5)


def test_opcheck_linear_and_ffn():
    torch.manual_seed(2)
    bases = basis_family(2, 2)
    x = torch.randn(3, 16, requires_grad=True)
    cores = torch.randn(6, 2, 8, requires_grad=True)
    bias = torch.randn(12, requires_grad=True)
    torch.library.opcheck(torch.ops.phm.phm_linear.default, (x, cores, bases, bias, None, "float", 0, "silu"))
    g, u, d = torch.randn(10, 2, 8), torch.randn(10, 2, 8), torch.randn(8, 2, 10)
    torch.library.opcheck(torch.ops.phm.phm_ffn.default,
                          (x.detach(), bases, g, u, d, None, None, None, None, None, None, "float", 0,
                           "silu", "swiglu"), test_utils=("test_schema", "test_faketensor"))


def test_linear_gradients_match_reference():
    torch.manual_seed(3)
    bases = basis_family(2, 3)
    x = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    cores = torch.randn(5, 3, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(10, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, c, b: torch.ops.phm.phm_linear(a, c, bases.double(), b, None, "float", 0,
                                                                      "gelu"), (x, cores, bias))


def test_ffn_cpu_matches_reference():
    torch.manual_seed(4)
    bases = basis_family(2, 2)
    x = torch.randn(3, 16)
    g, u, d = torch.randn(10, 2, 8), torch.randn(10, 2, 8), torch.randn(8, 2, 10)
    y = torch.ops.phm.phm_ffn(x, bases, g, u, d, None, None, None, None, None, None, "float", 0, "silu", "swiglu")
    ref = phm_forward(torch.nn.functional.silu(phm_forward(x, g, bases)) * phm_forward(x, u, bases), d, bases)
    torch.testing.assert_close(y, ref)
    y2 = torch.ops.phm.phm_ffn(x, bases, None, u, d, None, None, None, None, None, None, "float", 0, "gelu", "plain")
    torch.testing.assert_close(y2, phm_forward(torch.nn.functional.gelu(phm_forward(x, u, bases)), d, bases))


def test_export_sees_the_op():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = PHMLinear(16, 8, n=2, num_bases=2)

        def forward(self, x):
            return torch.ops.phm.phm_linear(x, self.layer.cores, self.layer.bases, self.layer.bias, None,
                                            "float", 0, "none")

    ep = torch.export.export(M(), (torch.randn(2, 16),))
    assert any("phm.phm_linear" in str(n.target) for n in ep.graph.nodes)


@pytest.mark.gpu
@pytest.mark.parametrize("t", [1, 16, 300, 4096])
@pytest.mark.parametrize("num_bases", [1, 2, 3])
def test_gpu_op_runs_kernels(t, num_bases):
    torch.manual_seed(t)
    layer = PHMLinear(512, 768, n=2, num_bases=num_bases).cuda().half()
    x = torch.randn(t, 512, device="cuda", dtype=torch.half)
    y = torch.ops.phm.phm_linear(x, layer.cores, layer.bases, layer.bias, None, "float", 0, "none")
    ref = phm_forward(x.double(), layer.cores.double(), layer.bases.double(), layer.bias.double())
    assert float((y.double() - ref).abs().max() / ref.abs().max()) < 1e-2
