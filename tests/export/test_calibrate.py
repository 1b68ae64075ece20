"""Calibrators against hand-computed scales on synthetic distributions."""

import doctest

import numpy as np
import pytest
import torch

import phm.export.calibrate as cal_mod
from phm.export.calibrate import make_calibrator, per_channel_weight_scales, quantize_symmetric


def test_doctests():
    assert doctest.testmod(cal_mod).failed == 0


def test_minmax_is_running_max_abs():
    cal = make_calibrator("minmax")
    cal.observe(np.array([0.5, -3.0]))
    cal.observe(torch.tensor([[2.0, 1.0]]))
    assert cal.amax() == 3.0


def test_percentile_on_uniform_is_the_quantile():
    # |U(-1, 1)| is U(0, 1): the 99th percentile is 0.99 (to a bin width of 1/2048).
    x = np.random.default_rng(0).uniform(-1, 1, 2_000_000)
    cal = make_calibrator("percentile", percentile=99.0)
    for chunk in np.array_split(x, 4):
        cal.observe(chunk)
    assert abs(cal.amax() - 0.99) < 2e-3


def test_percentile_on_gaussian_matches_erf_quantile():
    # P(|N(0,1)| ≤ 2.5758) = 0.99
    cal = make_calibrator("percentile", percentile=99.0)
    cal.observe(np.random.default_rng(1).standard_normal(2_000_000))
    assert abs(cal.amax() - 2.5758) < 0.02


def test_histogram_rebins_when_range_grows():
    cal = make_calibrator("percentile", percentile=50.0)
    cal.observe(np.full(1000, 0.5))
    cal.observe(np.full(1000, 1.5))  # range grows from 0.5 to 1.5: old counts move, not vanish
    assert cal.hist.sum() == 2000
    assert 0.4 < cal.amax() < 0.6


def test_entropy_clips_outliers_of_a_gaussian():
    # Gaussian with a few huge outliers: min-max is ruled by the outliers, KL is not. For N(0,1)
    # the KL-optimal 8-bit threshold is known to lie around 3.5–5 σ.
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal(1_000_000), [60.0, -55.0]])
    ent, mm = make_calibrator("entropy"), make_calibrator("minmax")
    ent.observe(x)
    mm.observe(x)
    assert mm.amax() == 60.0
    assert 3.0 < ent.amax() < 6.0


def test_entropy_keeps_full_range_of_uniform():
    # A uniform distribution has no tail to clip: the best threshold is (close to) its max.
    ent = make_calibrator("entropy")
    ent.observe(np.random.default_rng(3).uniform(-4, 4, 500_000))
    assert ent.amax() > 3.8


def test_per_channel_scales_and_roundtrip():
    w = np.array([[0.5, -1.27, 0.0], [2.54, 0.1, -0.2]], dtype=np.float32)
    s = per_channel_weight_scales(w)
    np.testing.assert_allclose(s, [0.01, 0.02], rtol=1e-6)
    q = quantize_symmetric(w, s[:, None])
    assert q.dtype == np.int8 and q[0].tolist() == [50, -127, 0] and q[1].tolist() == [127, 5, -10]
    assert np.abs(q * s[:, None] - w).max() <= s.max() / 2 + 1e-7


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown calibration method 'kl'; known: minmax, percentile, entropy"):
        make_calibrator("kl")
