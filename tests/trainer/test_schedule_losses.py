"""Schedule math and loss values, checked against hand-computed numbers."""

import doctest
import math

import pytest
import torch

from phm.trainer import schedule as schedule_mod
from phm.trainer.calibrate import fit_cores
from phm.trainer.hypercomplex import basis_family, kron_weight, project_dense
from phm.trainer.inject import PHMConfig, inject_phm
from phm.trainer.losses import causal_ce_loss, embedding_kd_loss, hidden_kd_loss, kd_loss, normalized_mse
from phm.trainer.schedule import LambdaSchedule, lr_factor
from tinymodels import tiny_model


def test_schedule_doctests():
    assert doctest.testmod(schedule_mod).failed == 0


def test_staggered_ramps_bottom_up():
    s = LambdaSchedule(stage_a_steps=100, num_groups=3, fade_fraction=0.7, ramp_width=0.5)
    # fade window 70 steps, each ramp 35 steps, starts at 0, 17.5, 35
    assert [s.window(g) for g in range(3)] == [(0.0, 35.0), (17.5, 52.5), (35.0, 70.0)]
    assert s.lam(0, 10) == pytest.approx(10 / 35) and s.lam(1, 10) == 0.0
    assert s.lam(2, 52) == pytest.approx(17 / 35)
    assert all(s.lam(g, 70) == 1.0 for g in range(3))
    assert all(s.lam(g, 99) == 1.0 for g in range(3))
    for step in range(100):  # lower blocks are never behind higher ones
        assert s.lam(0, step) >= s.lam(1, step) >= s.lam(2, step)


def test_top_down_together_and_abrupt():
    top = LambdaSchedule(100, 3, 0.7, 0.5, order="top_down")
    assert top.lam(2, 10) > 0.0 and top.lam(0, 10) == 0.0
    together = LambdaSchedule(100, 3, 0.5, order="together")
    assert {together.lam(g, 25) for g in range(3)} == {0.5}
    abrupt = LambdaSchedule(100, 3, abrupt=True)
    assert abrupt.lam(0, 0) == abrupt.lam(2, 0) == 1.0
    with pytest.raises(ValueError, match="order must be"):
        LambdaSchedule(10, 2, order="random")


def test_lr_factor_warmup_and_cosine():
    assert lr_factor(4, 100, 10) == pytest.approx(0.5)
    assert lr_factor(55, 100, 10) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, 100, 0) == pytest.approx(0.1)


def test_kd_loss_hand_computed():
    teacher = torch.tensor([[[0.0, 0.0]]])           # p_t = (0.5, 0.5)
    student = torch.tensor([[[math.log(3.0), 0.0]]])  # T = 1: p_s = (0.75, 0.25)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert kd_loss(student, teacher, temperature=1.0).item() == pytest.approx(expected, rel=1e-5)
    # T = 2: logits halve, p_s = softmax(log(3)/2, 0) = (√3, 1)/(√3+1); times T² = 4
    ps = torch.tensor([math.sqrt(3), 1.0]) / (math.sqrt(3) + 1)
    expected2 = 4 * (0.5 * math.log(0.5 / ps[0].item()) + 0.5 * math.log(0.5 / ps[1].item()))
    assert kd_loss(student, teacher, temperature=2.0).item() == pytest.approx(expected2, rel=1e-5)
    assert kd_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_ignores_padding():
    teacher = torch.zeros(1, 2, 2)
    student = torch.tensor([[[math.log(3.0), 0.0], [100.0, -100.0]]])
    masked = kd_loss(student, teacher, 1.0, mask=torch.tensor([[1, 0]]))
    assert masked.item() == pytest.approx(kd_loss(student[:, :1], teacher[:, :1], 1.0).item())


def test_causal_ce_hand_computed():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # position 0 predicts token 2 with p = 3/6 = 0.5
    ids = torch.tensor([[1, 2, 3]])
    mask = torch.tensor([[1, 1, 0]])  # token 3 is padding: only position 0 counts
    assert causal_ce_loss(logits, ids, mask).item() == pytest.approx(-math.log(0.5), rel=1e-5)
    full = causal_ce_loss(logits, ids)  # position 1 predicts 3 with p = 1/4
    assert full.item() == pytest.approx((-math.log(0.5) - math.log(0.25)) / 2, rel=1e-5)


def test_normalized_mse_hidden_and_embedding():
    target = torch.tensor([3.0, 4.0])
    assert normalized_mse(target * 0, target).item() == pytest.approx(1.0)
    assert normalized_mse(torch.tensor([3.0, 5.0]), target).item() == pytest.approx(1 / 25)
    h_t = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])
    h_s = torch.tensor([[[3.0, 5.0], [0.0, 0.0]]])
    assert hidden_kd_loss(h_s, h_t).item() == pytest.approx((1 / 25 + 1.0) / 2)
    assert hidden_kd_loss(h_s, h_t, torch.tensor([[1, 0]])).item() == pytest.approx(1 / 25)
    e = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    f = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert embedding_kd_loss(e, f).item() == pytest.approx(0.5)  # (1 − 0 + 1 − 1) / 2


def test_wrapper_records_normalized_reconstruction():
    model = tiny_model("llama")
    inject_phm(model, PHMConfig())
    layer = model.model.layers[0].mlp.up_proj
    x = torch.randn(3, 32)
    for lam in (0.0, 0.4, 1.0):
        layer.lam, layer.record_recon = lam, True
        y = layer(x)
        dense, phm = layer.base_layer(x), layer.phm(x)
        torch.testing.assert_close(y, torch.lerp(dense, phm, lam))
        assert layer.recon.item() == pytest.approx(normalized_mse(phm, dense).item(), rel=1e-5)


def test_fit_cores_white_inputs_give_projection_and_exact_weights_are_recovered():
    torch.manual_seed(0)
    h = basis_family(2, 2, dtype=torch.float64)
    w = torch.randn(12, 8, dtype=torch.float64)
    a0 = project_dense(w, h)
    torch.testing.assert_close(fit_cores(w, 5 * torch.eye(8, dtype=torch.float64), h, a0, ridge=0.0), a0)
    exact = kron_weight(torch.randn(6, 2, 4, dtype=torch.float64), h)
    x = torch.randn(100, 8, dtype=torch.float64)
    torch.testing.assert_close(kron_weight(fit_cores(exact, x.T @ x, h, a0, ridge=0.0), h), exact)
    # low-rank activations: the activation-weighted fit beats the weight-space projection on them
    x = torch.randn(200, 3, dtype=torch.float64) @ torch.randn(3, 8, dtype=torch.float64)
    err = lambda a: ((x @ kron_weight(a, h).T - x @ w.T).norm() / (x @ w.T).norm()).item()  # noqa: E731
    assert err(fit_cores(w, x.T @ x, h, a0, ridge=1e-3)) < 0.2 * err(a0)
