"""phm-export errors: one line, non-zero exit, no traceback, no partial artifacts."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
from click.testing import CliRunner

from phm.export import ExportConfig, Int8Config
from phm.export.cli import main

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _run(args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result, result.output.strip().splitlines()


def _assert_one_line_error(result, lines, needle):
    assert result.exit_code != 0
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1 and needle in errors[0], result.output


def test_missing_model_dir(tmp_path):
    result, lines = _run([tmp_path / "nope", "--out", tmp_path / "out"])
    _assert_one_line_error(result, lines, "does not exist")
    assert not (tmp_path / "out").exists()


def test_corrupt_weights(store, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(store.checkpoint("llama", True), model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    result, lines = _run([model, "--out", tmp_path / "out"])
    _assert_one_line_error(result, lines, "cannot load")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp dir left


@pytest.mark.parametrize("setup,needle", [
    (lambda p: (p / "calib").mkdir() or p / "calib", "is empty"),
    (lambda p: (p / "c.jsonl").write_text("{oops\n") and p / "c.jsonl", "not valid JSON"),
    (lambda p: p / "missing", "does not exist"),
])
def test_int8_bad_calibration_data_is_one_line(store, tmp_path, setup, needle):
    result, lines = _run([store.checkpoint("llama", True), "--int8", "--calib-data", setup(tmp_path),
                          "--out", tmp_path / "out"])
    _assert_one_line_error(result, lines, needle)
    assert "--int8" in result.output
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is importable here: --require-engine can be met")
def test_require_engine_without_tensorrt(store, tmp_path):
    result, lines = _run([store.checkpoint("llama", True), "--require-engine", "--out", tmp_path / "out"])
    _assert_one_line_error(result, lines, "tensorrt")
    assert not (tmp_path / "out").exists()


def test_existing_output_dir_is_not_overwritten(store, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result, lines = _run([store.checkpoint("llama", True), "--out", out])
    _assert_one_line_error(result, lines, "not empty")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_config_validation():
    with pytest.raises(ValueError, match="target"):
        ExportConfig(target="jetson-nano")
    with pytest.raises(ValueError, match="int8.calib_method"):
        ExportConfig(int8=Int8Config(calib_method="kl"))
    with pytest.raises(TypeError):  # the INT8 settings live in Int8Config only
        ExportConfig(calib_data="x.jsonl")
    assert ExportConfig(fp16=True).precision == "fp16"
    both = ExportConfig(fp16=True, int8=True)
    assert (both.precision, both.activations) == ("int8", "fp16")
    # SmoothQuant's default follows the rotation (on only for unrotated inputs); explicit values win
    assert (both.int8.rotate, both.int8.smoothing) == (True, False)
    assert Int8Config(rotate=False).smoothing is True
    assert Int8Config(smooth=True).smoothing is True
    with pytest.raises(ValueError, match="int8.smooth must be a bool"):
        Int8Config(smooth="yes")
    assert ExportConfig(int8=False).int8 is None
    with pytest.raises(ValueError, match="min_pixels 5000 exceeds max_pixels 100"):
        ExportConfig(min_pixels=5000, max_pixels=100)
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        ExportConfig(max_pixels=0)


def test_export_config_json_round_trip(tmp_path):
    """export_config.json (format 2) nests the INT8 settings and reads back equal; format 1 is refused."""
    config = ExportConfig(fp16=True, int8=Int8Config(lm_head=True, calib_method="minmax"), target="orin-nx")
    path = tmp_path / "export_config.json"
    path.write_text(config.to_json())
    doc = json.loads(path.read_text())
    assert doc["format_version"] == 2 and doc["int8"]["lm_head"] is True and "int8_lm_head" not in doc
    assert ExportConfig.from_json(path) == config
    path.write_text(json.dumps({**doc, "format_version": 1}))
    with pytest.raises(ValueError, match="format_version 1 is not supported"):
        ExportConfig.from_json(path)


@pytest.mark.parametrize("flag", [["--calib-data", "x.jsonl"], ["--report-data", "x.jsonl"], ["--int8-lm-head"],
                                  ["--int8-weights-only"], ["--no-int8-rotation"]])
def test_int8_flags_need_int8(store, tmp_path, flag):
    result, lines = _run([store.checkpoint("llama", True), *flag, "--out", tmp_path / "out"])
    _assert_one_line_error(result, lines, f"{flag[0]} is only used with --int8")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arch,args,needle", [
    ("llama", ["--max-pixels", "4096"], "apply to Qwen2(.5)-VL models only"),
    ("qwen2_vl", ["--min-pixels", "5000", "--max-pixels", "100"], "min_pixels 5000 exceeds max_pixels 100"),
    # above the processor's default maximum (28²·1280) without raising it
    ("qwen2_vl", ["--min-pixels", "2000000"], "min_pixels 2000000 exceeds max_pixels 1003520"),
])
def test_pixel_range_errors_are_one_line(store, tmp_path, arch, args, needle):
    result, lines = _run([store.checkpoint(arch, True), *args, "--out", tmp_path / "out"])
    _assert_one_line_error(result, lines, needle)
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    import transformers

    model = tmp_path / "dinov2"  # a vision-only backbone: the trainer knows it, the exporter has no path for it
    transformers.Dinov2Model(transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                       image_size=28, patch_size=7)).save_pretrained(model)
    result, lines = _run([model, "--out", tmp_path / "out"])
    _assert_one_line_error(result, lines, "no ONNX export path for model_type 'dinov2'")
    assert not (tmp_path / "out").exists()
