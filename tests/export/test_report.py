"""Report metrics by hand, and the written report files."""

import doctest
import json

import numpy as np
import pytest

import phm.export.report as report_mod
from phm.export.report import ReportRow, metrics, write_report


def test_doctests():
    assert doctest.testmod(report_mod).failed == 0


def test_metrics_hand_computed():
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    test = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    m = metrics(ref, test, np.array([0, 2]))
    cos = (1 / np.sqrt(2) + 1 / np.sqrt(10)) / 2
    assert m.logit_cosine == pytest.approx(cos)
    assert m.top1_agreement == 0.5  # row 0: argmax 0 vs 0 (tie broken to 0); row 1: 1 vs 2
    nll0 = -np.log(np.e / (2 * np.e + 1))
    nll1 = -np.log(np.e ** 3 / (1 + np.e + np.e ** 3))
    assert m.perplexity == pytest.approx(np.exp((nll0 + nll1) / 2))


def test_identical_logits_are_perfect():
    x = np.random.default_rng(0).standard_normal((20, 50))
    m = metrics(x, x, np.zeros(20, dtype=int))
    assert m.logit_cosine == pytest.approx(1.0) and m.top1_agreement == 1.0


def test_write_report(tmp_path):
    x = np.random.default_rng(1).standard_normal((10, 8))
    rows = [ReportRow("dense", p, metrics(x, x + e, np.zeros(10, dtype=int)), s)
            for p, e, s in (("fp32", 0, 400), ("int8", 0.1, 100))]
    md = write_report(rows, tmp_path)
    text = md.read_text()
    assert "| dense | int8 |" in text and "report.png" in text
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "report.json").read_text())[1]["precision"] == "int8"
    with pytest.raises(ValueError):
        write_report([], tmp_path)
