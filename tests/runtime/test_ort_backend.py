"""ORT generation over real exports equals torch's greedy decode token for token; phm-run errors."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from phm.export.api import export_model
from phm.export.config import ExportConfig
from phm.runtime.cli import main as phm_run
from phm.runtime.generate import GenerationConfig, generate
from phm.runtime.ort_backend import OrtBackend
from phm.runtime.torch_backend import TorchBackend
from phm.trainer import PHMConfig, drop_dense, inject_phm, load, save_phm_checkpoint
from tinymodels import save_tiny_model, tiny_model


@pytest.fixture(scope="module", params=[("llama", False), ("llama", True), ("gpt2", True)],
                ids=["llama-dense", "llama-phm", "gpt2-phm"])
def exported(request, tmp_path_factory):
    arch, phm = request.param
    root = tmp_path_factory.mktemp(f"{arch}{phm}")
    if phm:
        model = tiny_model(arch)
        cfg = PHMConfig()
        targets = inject_phm(model, cfg)
        drop_dense(model)
        model_dir = save_phm_checkpoint(model, cfg, targets, root / "ck")
    else:
        model_dir = save_tiny_model(arch, root / "ck")
    out = export_model(model_dir, ExportConfig(), root / "art")
    return load(model_dir), out


@pytest.mark.parametrize("graph", ["prepared", "portable"])
def test_ort_greedy_equals_torch(exported, graph):
    """The graph phm-export prepared for ONNX Runtime (what phm-run loads) and the portable one (PHM
    nodes on their reference functions, traced shape arithmetic) both generate torch's tokens."""
    model, art = exported
    cfg = GenerationConfig(max_new_tokens=16)
    ids = np.array([[5, 17, 33, 9, 101], [0, 0, 44, 12, 7]])
    mask = np.array([[1] * 5, [0, 0, 1, 1, 1]])
    backend = OrtBackend.from_artifacts(art) if graph == "prepared" else OrtBackend(art / "decoder.onnx")
    if graph == "prepared":  # lowered and lean: a file of its own
        assert json.loads((art / "manifest.json").read_text())["graphs"]["decoder"]["ort_file"] == "decoder.ort.onnx"
    ours = generate(backend, ids, cfg, attention_mask=mask).tokens
    ref = generate(TorchBackend(model), ids, cfg, attention_mask=mask).tokens
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("args,message", [
    (["/nonexistent/dir", "--prompt", "hi"], "is not an artifacts dir"),
    (["ART", "--prompt", "hi", "--backend", "cuda"], "Invalid value for '--backend'"),
    (["ART", "--prompt", "hi", "--image", "IMG"], "text-only model"),
    (["ART", "--prompt", "hi", "--backend", "trt"], "no TensorRT engine"),
    (["ART", "--prompt", "hi"], "holds no tokenizer"),
])
def test_phm_run_bad_input_one_line(exported, args, message, tmp_path):
    _, art = exported
    (tmp_path / "x.png").write_bytes(b"")  # --image must exist; a text-only artifact refuses any image
    result = CliRunner().invoke(phm_run, [str(art) if a == "ART" else str(tmp_path / "x.png") if a == "IMG" else a
                                          for a in args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
