"""PHMLinear and the PHM core math against the golden vectors and the kron definition."""

import doctest

import pytest
import torch
from golden.loader import golden_cases

import phm.trainer.hypercomplex as hc
from phm.trainer import PHMLinear, basis_family

CASES = golden_cases()


def test_doctests():
    result = doctest.testmod(hc)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_forward(case):
    layer = PHMLinear(case["d_in"], case["d_out"], n=case["n"], num_bases=case["num_bases"], bias=case["bias"])
    torch.testing.assert_close(layer.bases, case["bases"])  # same basis family as the generator
    with torch.no_grad():
        layer.cores.copy_(hc.cores_from_stack(case["cores"]))
        if case["bias"]:
            layer.bias.copy_(case["bias_tensor"])
        y = layer(case["x"])
    torch.testing.assert_close(y, case["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_golden_forward_low_precision(case, dtype, tol):
    cores = hc.cores_from_stack(case["cores"]).to(dtype)
    bias = case["bias_tensor"].to(dtype) if case["bias"] else None
    y = hc.phm_forward(case["x"].to(dtype), cores, case["bases"], bias)
    assert y.dtype == dtype
    scale = case["y"].abs().max()
    assert (y.float() - case["y"]).abs().max() <= tol * scale


@pytest.mark.parametrize("n,num_bases", [(2, 1), (2, 2), (2, 3), (2, 4), (4, 1), (4, 2), (4, 4), (4, 16)])
def test_forward_equals_materialised(n, num_bases):
    torch.manual_seed(0)
    layer = PHMLinear(32, 48, n=n, num_bases=num_bases)
    x = torch.randn(2, 3, 32)
    expected = x @ layer.to_dense().T + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert layer.cost.core_params == num_bases * 48 * 32 // n**2
    assert sum(p.numel() for p in layer.parameters()) == layer.cost.params


@pytest.mark.parametrize("n,full", [(2, 4), (4, 16)])
def test_from_dense_exact_when_bases_span(n, full):
    torch.manual_seed(1)
    w, b = torch.randn(40, 24), torch.randn(40)
    layer = PHMLinear.from_dense(w, b, n=n, num_bases=full)
    torch.testing.assert_close(layer.to_dense(), w, rtol=0, atol=1e-5)
    x = torch.randn(5, 24)
    torch.testing.assert_close(layer(x), x @ w.T + b, rtol=1e-5, atol=1e-5)


def test_from_dense_projection_errors_match_theory():
    # On an i.i.d. Gaussian matrix the orthogonal projection keeps B/n² of the energy, so the
    # relative error is sqrt(1 - B/4) for n = 2 (docs/design.md §1: 0.866, 0.707, 0.500).
    torch.manual_seed(2)
    w = torch.randn(512, 512)
    for num_bases, expected in [(1, 0.866), (2, 0.707), (3, 0.5)]:
        rel = (PHMLinear.from_dense(w, num_bases=num_bases).to_dense() - w).norm() / w.norm()
        assert abs(rel.item() - expected) < 0.01


def test_projection_uses_kron_h_a_layout():
    # A weight built as kron(H, A) must be recovered exactly with B smaller than n²; the
    # interleaved kron(A, H) reading of the paper's notebook would not recover it.
    torch.manual_seed(3)
    bases = basis_family(2, 2)
    stack = torch.randn(2, 6, 5)
    w = sum(torch.kron(bases[b], stack[b]) for b in range(2))
    layer = PHMLinear.from_dense(w, n=2, num_bases=2)
    torch.testing.assert_close(hc.cores_to_stack(layer.cores.detach()), stack, rtol=0, atol=1e-5)


def test_projection_with_non_orthogonal_bases_uses_gram():
    torch.manual_seed(4)
    bases = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 1.0]]])  # not orthogonal
    stack = torch.randn(2, 3, 3)
    w = sum(torch.kron(bases[b], stack[b]) for b in range(2))
    cores = hc.project_dense(w, bases)
    torch.testing.assert_close(hc.kron_weight(cores, bases).float(), w, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_and_leading_dims(dtype):
    layer = PHMLinear(16, 8, n=2, num_bases=3).to(dtype)
    y = layer(torch.randn(2, 3, 4, 16, dtype=dtype))
    assert y.shape == (2, 3, 4, 8) and y.dtype == dtype


def test_backward_reaches_cores():
    layer = PHMLinear(8, 8, n=2, num_bases=2)
    layer(torch.randn(4, 8)).sum().backward()
    assert layer.cores.grad is not None and layer.cores.grad.abs().sum() > 0


def test_bases_are_orthogonal_and_span():
    for n in (2, 4):
        h = basis_family(n, n * n, dtype=torch.float64)
        gram = torch.einsum("bij,cij->bc", h, h)
        torch.testing.assert_close(gram, torch.diag(torch.diagonal(gram)))
        assert torch.linalg.matrix_rank(h.reshape(n * n, n * n)) == n * n
    # n = 4 starts with the quaternion units: J² = -I pattern for i, j, k.
    q = basis_family(4, 4)
    for b in (1, 2, 3):
        torch.testing.assert_close(q[b] @ q[b], -torch.eye(4))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(in_features=15, out_features=8), "in_features=15 is not a positive multiple of n=2"),
        (dict(in_features=16, out_features=9), "out_features=9 is not a positive multiple of n=2"),
        (dict(in_features=16, out_features=8, num_bases=5), "num_bases must be in 1..4"),
        (dict(in_features=16, out_features=8, num_bases=0), "num_bases must be in 1..4"),
        (dict(in_features=16, out_features=8, bases="octonion"), "unknown basis family 'octonion'"),
        (dict(in_features=18, out_features=9, n=3), "basis family 'default' is defined for n in"),
    ],
)
def test_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PHMLinear(**kwargs)


def test_from_dense_rejects_indivisible_weight():
    with pytest.raises(ValueError, match="not a positive multiple of n=2"):
        PHMLinear.from_dense(torch.randn(7, 8), n=2, num_bases=2)


def test_units_family_any_n():
    layer = PHMLinear.from_dense(torch.randn(9, 6), n=3, num_bases=9, bases="units")
    assert layer.cost.core_params == 54


def test_cost_accounting():
    cost = PHMLinear(3584, 18944, n=2, num_bases=2, bias=False).cost
    assert cost.byte_ratio == 0.5
    assert cost.weight_bytes(16) == 2 * 18944 * 3584 // 4 * 2
    assert cost.fused_macs == cost.dense_macs  # B = n: same MACs, half the bytes
    assert PHMLinear(64, 64, n=2, num_bases=1, bias=False).cost.fused_macs == 64 * 64 // 2
