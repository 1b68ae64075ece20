"""The polygraphy checks commands.sh writes: per-output bounds from each output's magnitude (float
graphs) or from the INT8 error the export measured; they pass on the export itself and fail on the
negative control, the same graph against another model's reference outputs."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from phm.export import ExportConfig, export_model
from phm.export.tolerance import MARGIN, REL, float_tolerances, int8_tolerances, measured_median_errors
from tinymodels import tiny_model

BIN = Path(sys.executable).parent


def _polygraphy_onnxrt(art: Path, ref: str | None = None) -> subprocess.CompletedProcess:
    """commands.sh's `polygraphy run … --onnxrt` line as written, optionally against another reference."""
    argv = shlex.split(json.loads((art / "manifest.json").read_text())["commands"]["decoder"]["polygraphy_onnxrt"])
    if ref is not None:
        argv[argv.index("--load-outputs") + 1] = ref
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=art, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def other_reference(tmp_path_factory):
    """The reference outputs of another tiny Llama (same shapes, other weights)."""
    root = tmp_path_factory.mktemp("other")
    tiny_model("llama", seed=7).save_pretrained(root / "model")
    return export_model(root / "model", ExportConfig(), root / "art") / "decoder.ref.json"


def test_float_bounds_follow_each_outputs_magnitude():
    ref = [OrderedDict(logits=np.array([[-11.0, 3.0]], np.float32), small=np.array([0.5, -0.25], np.float32),
                       ids=np.array([1, 2]))]
    tol = float_tolerances(ref, "fp32", "onnxrt")
    assert tol == {"logits": [11 * REL[("fp32", "onnxrt")], REL[("fp32", "onnxrt")]],
                   "small": [0.5 * REL[("fp32", "onnxrt")], REL[("fp32", "onnxrt")]]}  # integer outputs: none


def test_int8_bounds_are_the_measured_median_error_with_the_margin():
    ref = [OrderedDict(logits=np.array([1.0, 2.0, 4.0, 8.0], np.float32))]
    got = [{"logits": np.array([1.1, 2.0, 4.4, 8.0], np.float32)}]
    measured = measured_median_errors(got, ref)
    assert np.allclose(measured["logits"], [0.05, 0.05])  # |Δ| 0.1, 0, 0.4, 0; |Δ|/|ref| 0.1, 0, 0.1, 0
    atol, rtol = int8_tolerances(measured, ref)["logits"]
    assert atol == pytest.approx(MARGIN * 0.05, rel=1e-2) and rtol == pytest.approx(MARGIN * 0.05, rel=1e-2)


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_commands_check_passes_on_the_export_and_fails_on_another_models_reference(store, other_reference, int8,
                                                                                    tmp_path):
    art = store.artifacts("llama", True, **({"int8": True} if int8 else {}))
    tolerances = json.loads((art / "manifest.json").read_text())["graphs"]["decoder"]["tolerances"]
    assert tolerances["check"] == ("median" if int8 else "elemwise")
    own = _polygraphy_onnxrt(art)
    assert own.returncode == 0 and "PASSED" in own.stdout + own.stderr, (own.stdout + own.stderr)[-3000:]
    control = tmp_path / "other.ref.json"
    shutil.copy(other_reference, control)
    wrong = _polygraphy_onnxrt(art, str(control))
    assert wrong.returncode != 0 and "FAILED" in wrong.stdout + wrong.stderr, (wrong.stdout + wrong.stderr)[-3000:]
