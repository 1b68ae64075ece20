"""phm-run on a complete tiny text artifact (tokenizer in hf/): output equals torch, timing line,
--json, seeded sampling; TensorRT engine/plugin checks that run without TensorRT."""

import importlib.util
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from tinytok import word_tokenizer

from phm.common.artifacts import file_entry
from phm.export.api import export_model
from phm.export.config import ExportConfig
from phm.runtime.backend import BackendError
from phm.runtime.cli import main as phm_run
from phm.runtime.generate import GenerationConfig, generate
from phm.runtime.torch_backend import TorchBackend
from phm.runtime.trt_backend import TrtBackend, check_manifest_plugins
from phm.trainer import PHMConfig, drop_dense, inject_phm, load, save_phm_checkpoint, set_lambda
from tinymodels import tiny_model
from phm.trt_plugins import spec


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama-cli")
    word_tokenizer().save_pretrained(root / "source")
    model = tiny_model("llama")
    cfg = PHMConfig()
    targets = inject_phm(model, cfg)
    set_lambda(model, 1.0)
    drop_dense(model)
    ckpt = save_phm_checkpoint(model, cfg, targets, root / "ckpt", source_dir=root / "source")
    return export_model(ckpt, ExportConfig(), root / "art")


def _run(args):
    return CliRunner().invoke(phm_run, [str(a) for a in args])


def test_cli_tokens_equal_torch_backend(art):
    model = load(json.loads((art / "manifest.json").read_text())["model_dir"])
    ref = generate(TorchBackend(model), np.array([[5, 17, 33, 9]]),
                   GenerationConfig(max_new_tokens=12, stop_ids=(2,))).tokens[0].tolist()
    result = _run([art, "--prompt", "w5 w17 w33 w9", "--max-new-tokens", 12, "--json", "--threads", 1])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["prompt_ids"] == [5, 17, 33, 9]
    assert out["tokens"] == ref
    assert out["backend"] == "ort" and out["device"] == "cpu" and out["peak_device_mb"] is None
    assert out["decode_tokens"] == len(ref) - 1 and out["prefill_ms"] > 0 and out["peak_rss_mb"] > 0
    assert out["text"] == " ".join(f"w{t}" for t in ref if t != 2)


def test_mapped_weights_generate_the_same_tokens(art):
    """--mapped-weights: ONNX Runtime keeps the weights as mapped (no prepacking), same tokens."""
    from phm.runtime.ort_backend import OrtBackend

    args = [art, "--prompt", "w5 w17 w33 w9", "--max-new-tokens", 12, "--json", "--threads", 1]
    default, mapped = (json.loads(_run(args + extra).stdout) for extra in ([], ["--mapped-weights"]))
    assert mapped["tokens"] == default["tokens"]
    options = OrtBackend.from_artifacts(art, prepack=False).session.get_session_options()
    assert options.get_session_config_entry("session.disable_prepacking") == "1"


def test_text_and_timing_line(art):
    result = _run([art, "--prompt", "w5 w17", "--max-new-tokens", 6])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("w")
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("[ort cpu] startup ") and ", prefill " in line and "tok/s" in line and "peak RSS" in line


def test_sampling_flags_are_seeded(art):
    args = [art, "--prompt", "w5 w17", "--max-new-tokens", 10, "--temperature", 1.5, "--top-p", 0.95, "--json"]
    a, b, c = (json.loads(_run(args + ["--seed", s]).stdout)["tokens"] for s in (1, 1, 2))
    assert a == b
    greedy = json.loads(_run(args[:5] + ["--json"]).stdout)["tokens"]
    assert a != c or a != greedy  # sampling at T=1.5 moves off the greedy path for some seed


@pytest.mark.parametrize("args,message", [
    (["--prompt", "w5", "--temperature", "-1"], "Invalid value for '--temperature'"),
    (["--prompt", "w5", "--top-p", "0"], "Invalid value for '--top-p'"),
    (["--prompt", "w5", "--image", "/nonexistent.png"], "does not exist"),
    (["--prompt", "w5", "--backend", "trt"], "no TensorRT engine"),
    (["--prompt", "w5", "--backend", "trt", "--mapped-weights"], "--mapped-weights is an ONNX Runtime option"),
])
def test_bad_input_one_line(art, args, message):
    result = _run([art, *args])
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output


def _with_engine(art, tmp_path, version=spec.PLUGIN_VERSION, namespace=spec.PLUGIN_NAMESPACE):
    """A copy of the artifacts whose manifest lists a decoder engine built for the given plugin."""
    out = tmp_path / "art"
    shutil.copytree(art, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["engines"] = {"decoder": "engines/decoder.orin.engine"}
    (out / "engines").mkdir(exist_ok=True)
    (out / "engines" / "decoder.orin.engine").write_bytes(b"placeholder: never deserialised by these tests")
    for plugin in manifest["graphs"]["decoder"]["plugins"]:
        plugin.update(version=version, namespace=namespace)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_manifest_records_the_plugins_of_the_trt_file(art):
    plugins = json.loads((art / "manifest.json").read_text())["graphs"]["decoder"]["plugins"]
    assert plugins == [{"name": spec.PHM_FFN.op_type, "version": spec.PLUGIN_VERSION,
                        "namespace": spec.PLUGIN_NAMESPACE}]


def test_plugin_version_mismatch_is_clear_before_tensorrt(art, tmp_path):
    bad = _with_engine(art, tmp_path, version="0")
    with pytest.raises(BackendError, match=r"built for plugin PHMFFN version '0' .* provides version '1'"):
        check_manifest_plugins(bad)
    result = _run([bad, "--prompt", "w5", "--backend", "trt"])
    assert result.exit_code == 1 and "built for plugin PHMFFN version '0'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_plugin_namespace_mismatch_and_missing_record(art, tmp_path):
    with pytest.raises(BackendError, match="namespace 'other'"):
        check_manifest_plugins(_with_engine(art, tmp_path / "a", namespace="other"))
    old = _with_engine(art, tmp_path / "b")
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["graphs"]["decoder"]["plugins"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match="records no plugin versions"):
        check_manifest_plugins(old)


def test_matching_engine_then_needs_tensorrt(art, tmp_path):
    good = _with_engine(art, tmp_path)
    engine, required, _ = check_manifest_plugins(good)
    assert engine == good / "engines" / "decoder.orin.engine" and required[0]["name"] == "PHMFFN"
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is importable here: the next check needs a real engine")
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        TrtBackend.from_artifacts(good)


def test_chat_wraps_the_prompt_in_the_template(art, tmp_path):
    chat = tmp_path / "art"
    shutil.copytree(art, chat)
    cfg_path = chat / "hf" / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    # a template that brackets the user turn with known words, so the ids show it was applied
    cfg["chat_template"] = "{% for m in messages %}w40 {{ m['content'] }} w41{% endfor %}{% if add_generation_prompt %} w42{% endif %}"
    cfg_path.write_text(json.dumps(cfg))
    (chat / "hf" / "chat_template.jinja").unlink(missing_ok=True)
    # the manifest records every file's size: an edited file is re-recorded as a re-export would
    manifest = json.loads((chat / "manifest.json").read_text())
    manifest["files"]["hf/tokenizer_config.json"] = file_entry(cfg_path)
    manifest["files"].pop("hf/chat_template.jinja", None)
    (chat / "manifest.json").write_text(json.dumps(manifest))
    out = json.loads(_run([chat, "--prompt", "w5 w17", "--max-new-tokens", 2, "--chat", "--json"]).stdout)
    assert out["prompt_ids"] == [40, 5, 17, 41, 42]
    plain = json.loads(_run([chat, "--prompt", "w5 w17", "--max-new-tokens", 2, "--json"]).stdout)
    assert plain["prompt_ids"] == [5, 17]


def test_chat_without_a_template_is_one_line(art):
    result = _run([art, "--prompt", "w5", "--chat"])
    assert result.exit_code == 1 and "has no chat template" in result.output
    assert len(result.output.strip().splitlines()) == 1
