"""Artifacts dir: manifest, byte-identical re-export, Polygraphy CLI, size ratio, strict, external data."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from exportkit import make_phm_checkpoint
from ortloop import manifest, session

from phm.export import ExportConfig, ExportError, export_model
from phm.export import api as export_api
from tinymodels import tiny_model
from phm.trt_plugins import spec

POLYGRAPHY = str(Path(sys.executable).parent / "polygraphy")


def _polygraphy(art: Path, kind: str, ref: str | None = None, atol="1e-4", rtol="1e-4"):
    cmd = [POLYGRAPHY, "run", f"{kind}.onnx", "--onnxrt", "--load-inputs", f"{kind}.inputs.json",
           "--load-outputs", ref or f"{kind}.ref.json", "--atol", atol, "--rtol", rtol]
    return subprocess.run(cmd, cwd=art, capture_output=True, text=True, timeout=120)


def test_manifest_describes_the_artifacts(store):
    art = store.artifacts("llama", True)
    m = manifest(art)
    assert m["precision"] == "fp32" and m["target"] == {"name": "agx-orin", "sm": "sm_87"}
    assert {"phm-edge", "torch", "transformers", "onnx", "onnxruntime"} <= set(m["versions"])
    dec = m["graphs"]["decoder"]
    names = [i["name"] for i in dec["io"]["inputs"]]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert names[3:] == [f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert dec["io"]["outputs"][0] == {"name": "logits", "dtype": "float32", "shape": ["batch", "sequence", 256]}
    assert {(t["num_bases"], t["in_features"], t["out_features"]) for t in m["phm"]["layers"]} == {(2, 32, 64), (2, 64, 32)}
    p = m["params"]
    assert p["params_after"] < p["params_before"] and p["phm_params"] * 2 == p["phm_dense_params"]
    for rel, entry in m["files"].items():
        data = (art / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
    cmds = m["commands"]["decoder"]
    assert "--staticPlugins=$PLUGINS" in cmds["trtexec"] and "decoder.trt.onnx" in cmds["trtexec"]
    assert "--minShapes=input_ids:1x1," in cmds["trtexec"] and "past_key_values.0.key:1x2x0x8" in cmds["trtexec"]
    assert "--trt --plugins $PLUGINS" in cmds["polygraphy_trt"]
    assert cmds["polygraphy_onnxrt"].startswith("polygraphy run decoder.ort.onnx --onnxrt")
    assert (art / "commands.sh").read_text().count("trtexec") >= 1
    assert (art / "hf" / "phm_config.json").is_file() and not (art / "hf" / "model.safetensors").exists()
    assert m["engine_status"].startswith("not built") or m["engines"]


def test_ort_and_trt_files_differ_only_in_functions(store):
    art = store.artifacts("qwen2_5_vl", True)
    for kind in ("decoder", "vision", "embed"):
        ort_model = onnx.load(str(art / f"{kind}.onnx"))
        trt_model = onnx.load(str(art / f"{kind}.trt.onnx"))
        assert [f.name for f in ort_model.functions] == ["PHMLinear", "PHMFFN"] and not trt_model.functions
        assert ort_model.graph == trt_model.graph
        for node in trt_model.graph.node:
            if node.domain == spec.DOMAIN:
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                assert attrs["plugin_namespace"].decode() == spec.PLUGIN_NAMESPACE
                assert attrs["plugin_version"].decode() == spec.PLUGIN_VERSION
                assert {a.name for a in spec.OPS[node.op_type].attributes} == set(attrs)
                assert len(node.input) == len(spec.OPS[node.op_type].inputs)


def test_same_input_gives_byte_identical_onnx(store, tmp_path):
    """Re-export in a fresh process through the CLI: same bytes for every ONNX file."""
    ckpt = store.checkpoint("gpt2", True)
    first = store.artifacts("gpt2", True)
    proc = subprocess.run([str(Path(sys.executable).parent / "phm-export"), str(ckpt), "--out", str(tmp_path / "again")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "TensorRT" in proc.stderr or (tmp_path / "again" / "engines").is_dir()
    onnx_files = sorted(p.name for p in first.glob("*.onnx"))
    assert onnx_files == ["decoder.onnx", "decoder.ort.onnx", "decoder.trt.onnx"]
    for name in onnx_files + ["decoder.ref.json", "decoder.inputs.json"]:
        assert (first / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


@pytest.mark.parametrize("arch,kinds", [("llama", ("decoder",)), ("bert", ("encoder",)),
                                        ("qwen2_5_vl", ("vision", "embed", "decoder"))])
def test_polygraphy_onnxrt_matches_torch_reference(store, arch, kinds):
    art = store.artifacts(arch, True)
    for kind in kinds:
        proc = _polygraphy(art, kind)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "PASSED" in proc.stdout + proc.stderr


def test_polygraphy_fails_on_a_perturbed_reference(store, tmp_path):
    from polygraphy.comparator import RunResults

    art = store.artifacts("llama", True)
    results = RunResults.load(str(art / "decoder.ref.json"))
    for _, iterations in results.items():
        iterations[0]["logits"] = iterations[0]["logits"] + 1e-2
    bad = tmp_path / "bad.ref.json"
    results.save(str(bad))
    proc = _polygraphy(art, "decoder", ref=str(bad))
    assert proc.returncode != 0
    assert "FAILED" in proc.stdout + proc.stderr


def _size_model_dir(tmp: Path, phm: bool) -> Path:
    """A tiny Llama whose MLPs dominate the parameters (untied head, intermediate 8× hidden)."""
    import transformers as tf

    config = tf.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=1024, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                            tie_word_embeddings=False)
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(config).eval()
    if not phm:
        model.save_pretrained(tmp / "dense")
        return tmp / "dense"
    from phm.trainer import PHMConfig, drop_dense, inject_phm, save_phm_checkpoint, set_lambda

    cfg = PHMConfig()
    targets = inject_phm(model, cfg)
    set_lambda(model, 1.0)
    drop_dense(model)
    return save_phm_checkpoint(model, cfg, targets, tmp / "phm")


def test_phm_onnx_is_smaller_by_the_parameter_ratio(tmp_path):
    arts = {}
    for phm in (False, True):
        arts[phm] = export_model(_size_model_dir(tmp_path, phm), ExportConfig(), tmp_path / f"art-{phm}")
    m = manifest(arts[True])
    param_ratio = m["params"]["params_after"] / manifest(arts[False])["params"]["params_after"]
    assert param_ratio == pytest.approx(m["params"]["param_ratio"])
    size_ratio = (arts[True] / "decoder.trt.onnx").stat().st_size / (arts[False] / "decoder.trt.onnx").stat().st_size
    assert param_ratio < 0.7  # the MLPs dominate: B=2, n=2 halves them
    assert size_ratio == pytest.approx(param_ratio, rel=0.05)


def test_strict_fails_when_a_configured_mlp_is_not_rewritten(store, tmp_path, monkeypatch):
    ckpt = store.checkpoint("llama", True)
    monkeypatch.setattr(export_api, "fuse_phm_linear", lambda graph: 0)  # a rewrite that finds nothing
    with pytest.raises(ExportError, match="--strict: 2 MLP"):
        export_model(ckpt, ExportConfig(strict=True), tmp_path / "strict")
    assert not (tmp_path / "strict").exists()
    out = export_model(ckpt, ExportConfig(), tmp_path / "lenient")
    assert [s["status"] for s in manifest(out)["mlps"]] == ["not rewritten"] * 2


def test_partial_and_mixed_b_configs_stay_phmlinear(tmp_path):
    """down-only PHM, and gate with B=1 next to up/down with B=2: PHMLinear nodes, not fused."""
    for name, cfg in (("down", dict(projections=("down",))), ("mixed", dict(layer_num_bases={r".*gate_proj": 1}))):
        ckpt = make_phm_checkpoint("llama", tmp_path / name / "model", **cfg)
        art = export_model(ckpt, ExportConfig(strict=True), tmp_path / name / "art")
        m = manifest(art)
        assert [s["status"] for s in m["mlps"]] == ["PHMLinear"] * 2
        assert m["graphs"]["decoder"]["phm_nodes"] == {"PHMLinear": 2 if name == "down" else 6, "PHMFFN": 0}
        proc = _polygraphy(art, "decoder")
        assert proc.returncode == 0, proc.stdout[-2000:]


def test_external_data_is_shared_by_both_files(store, tmp_path):
    ckpt = store.checkpoint("qwen2", True)
    art = export_model(ckpt, ExportConfig(external_data_mb=0), tmp_path / "ext")
    assert (art / "model.onnx.data").is_file()
    for name in ("decoder.onnx", "decoder.trt.onnx"):
        shallow = onnx.load(str(art / name), load_external_data=False)
        external = [i for i in shallow.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
        assert len(external) > 10 and {e.value for i in external for e in i.external_data if e.key == "location"} \
            == {"model.onnx.data"}
    trt = onnx.load(str(art / "decoder.trt.onnx"))  # loads its initializers from the shared data file
    assert not trt.functions and len(trt.graph.initializer) > 0
    ids = np.array([[5, 6, 7]], np.int64)
    sess = session(art / "decoder.onnx")
    feeds = {"input_ids": ids, "attention_mask": np.ones((1, 3), np.int64), "position_ids": np.arange(3)[None]}
    for inp in sess.get_inputs()[3:]:
        feeds[inp.name] = np.zeros((1, inp.shape[1], 0, inp.shape[3]), np.float32)
    ref = _polygraphy(art, "decoder")
    assert ref.returncode == 0
    assert np.isfinite(sess.run(None, feeds)[0]).all()


def test_tied_embedding_is_stored_once(store):
    """Tiny Llama ties lm_head to embed_tokens: the ONNX keeps one 256×32 table, not two."""
    from onnx import numpy_helper

    art = store.artifacts("llama", False)
    model = onnx.load(str(art / "decoder.trt.onnx"))
    tables = [i for i in model.graph.initializer if sorted(i.dims) == [32, 256]]
    assert len(tables) == 1
    # weights only: the folded shape constants and rotary frequencies (≤ 8 values each) are not parameters
    stored = sum(size for i in model.graph.initializer if (size := numpy_helper.to_array(i).size) > 8)
    assert stored <= manifest(art)["params"]["params_after"]


def test_hidden_files_of_the_model_dir_are_not_copied(store, tmp_path):
    """A temporary another tool left in the model dir (an interrupted save's `.tmpXXXX`) is not the
    model's: hf/ gets the config and tokenizer files, not it."""
    model = tmp_path / "model"
    shutil.copytree(store.checkpoint("llama", True), model)
    (model / ".tmpk2x9").write_bytes(b"\0" * 4096)
    art = export_model(model, ExportConfig(), tmp_path / "art")
    assert (art / "hf" / "config.json").is_file() and not (art / "hf" / ".tmpk2x9").exists()
