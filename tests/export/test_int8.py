"""phm-export --int8 on tiny models: where Q/DQ goes, INT8 PHM cores in both files, ORT closeness,
the CLI end to end (fp32 and fp16 activations) with its report."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper
from ortloop import session as float_session

from phm.export import Int8Config
from phm.export.cli import main
from phm.export.quantize import ort_options
from phm.trt_plugins import spec


def session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), ort_options(), providers=["CPUExecutionProvider"])


def _producers(model: onnx.ModelProto) -> dict:
    return {o: n for n in model.graph.node for o in n.output}


def _w8a8_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMuls whose activation input comes from a DequantizeLinear (fed by a QuantizeLinear)."""
    prod = _producers(model)
    out = []
    for n in model.graph.node:
        if n.op_type not in ("MatMul", "Gemm"):
            continue
        a = prod.get(n.input[0])
        if a is not None and a.op_type == "DequantizeLinear" and prod[a.input[0]].op_type == "QuantizeLinear":
            out.append(n)
    return out


def _weight_dq(model: onnx.ModelProto, node) -> onnx.NodeProto | None:
    prod = _producers(model)
    w = prod.get(node.input[1])
    while w is not None and w.op_type == "Cast":
        w = prod.get(w.input[0])
    return w if w is not None and w.op_type == "DequantizeLinear" else None


@pytest.mark.parametrize("phm", [True, False], ids=["phm", "dense"])
def test_qdq_on_exactly_the_attention_matmuls(store, phm):
    art = store.artifacts("llama", phm, int8=True)
    model = onnx.load(str(art / "decoder.trt.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    w8a8 = _w8a8_matmuls(model)
    # names are read only here, to check the structural classification against the torch modules
    assert sorted(n.name.split("/")[-2] for n in w8a8) == sorted(["q_proj", "k_proj", "v_proj", "o_proj"] * 2)
    for n in w8a8:
        dq = _weight_dq(model, n)
        assert dq is not None and next(a.i for a in dq.attribute if a.name == "axis") == 1
        w, s = inits[dq.input[0]], numpy_helper.to_array(inits[dq.input[1]])
        assert w.data_type == onnx.TensorProto.INT8 and s.shape == (w.dims[1],)  # per output channel of (K, N)
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(q_nodes) == 4  # one per activation tensor: q/k/v share theirs
    lm_head = [n for n in model.graph.node if n.op_type == "MatMul" and "lm_head" in n.name]
    assert len(lm_head) == 1 and _weight_dq(model, lm_head[0]) is None  # lm_head stays float by default
    mlp = [n for n in model.graph.node if n.op_type == "MatMul" and "/mlp/" in n.name]
    if phm:
        assert mlp == []
    else:  # the dense model's MLP weights: INT8 weight-only, activations not quantized
        assert len(mlp) == 6 and all(_weight_dq(model, n) is not None for n in mlp)
        assert not {n.name for n in mlp} & {n.name for n in w8a8}


def test_int8_phm_cores_in_both_files(store):
    art = store.artifacts("llama", True, int8=True)
    for name in ("decoder.onnx", "decoder.trt.onnx"):
        model = onnx.load(str(art / name))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        phm = [n for n in model.graph.node if n.domain == spec.DOMAIN]
        assert [n.op_type for n in phm] == ["PHMFFN", "PHMFFN"]
        for n in phm:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            assert attrs["weight_format"] == b"int8"
            for first in (spec.GATE_CORES, spec.UP_CORES, spec.DOWN_CORES):
                cores, scales = inits[n.input[first]], inits[n.input[first + 1]]
                assert cores.dtype == np.int8 and cores.ndim == 3 and np.abs(cores).max() == 127
                assert scales.dtype == np.float32 and scales.shape == (cores.shape[0],)
    assert len(onnx.load(str(art / "decoder.trt.onnx")).functions) == 0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # gpt2: attention is Gemm (Conv1D)
def test_int8_ort_close_to_fp32(store, arch):
    """Same inputs through the fp32 export and the INT8 export: logit cosine ≥ 0.999, relative max
    error ≤ 5 % of the logit range, and the INT8 graph really differs (it is quantized)."""
    fp32, int8 = store.artifacts(arch, True), store.artifacts(arch, True, int8=True)
    from polygraphy.json import load_json

    feed = load_json(str(fp32 / "decoder.inputs.json"))[0]
    outs = [s(a / "decoder.onnx").run(["logits"], feed)[0].astype(np.float64)
            for s, a in ((float_session, fp32), (session, int8))]
    ref, got = (o.reshape(-1, o.shape[-1]) for o in outs)
    cos = (ref * got).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos.min() >= 0.999
    assert np.abs(ref - got).max() <= 0.05 * (ref.max() - ref.min())
    assert np.abs(ref - got).max() > 1e-5
    # q/k/v/o of both layers; GPT-2: its fused c_attn and c_proj Conv1Ds (Gemm nodes)
    assert len(_w8a8_matmuls(onnx.load(str(int8 / "decoder.trt.onnx")))) == (4 if arch == "gpt2" else 8)


@pytest.mark.parametrize("fp16", [False, True], ids=["int8", "fp16-int8"])
def test_cli_int8_end_to_end(store, tmp_path, fp16):
    out = tmp_path / "art"
    args = [str(store.checkpoint("llama", True)), "--int8", "--out", str(out)] + (["--fp16"] if fp16 else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["precision"], manifest["activations"]) == ("int8", "fp16" if fp16 else "fp32")
    assert manifest["report"] == "report.md" and (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    rows = json.loads((out / "report.json").read_text())
    assert [r["precision"] for r in rows] == ["fp32", "fp16", "int8"]
    assert rows[2]["metrics"]["top1_agreement"] >= 0.9 and rows[0]["metrics"]["top1_agreement"] == 1.0
    assert f"activations {'fp16' if fp16 else 'fp32'}" in (out / "commands.sh").read_text()
    from polygraphy.json import load_json

    feed = load_json(str(out / "decoder.inputs.json"))[0]
    logits = session(out / "decoder.onnx").run(["logits"], feed)[0]
    assert logits.dtype == (np.float16 if fp16 else np.float32) and np.isfinite(logits).all()
    cmd = manifest["commands"]["decoder"]["polygraphy_onnxrt"]
    assert cmd.endswith("--check-error-stat median")
    if not fp16:  # the command commands.sh runs, as written, passes on the export
        import shlex
        import subprocess
        import sys
        from pathlib import Path

        argv = shlex.split(cmd)
        argv[0] = str(Path(sys.executable).parent / "polygraphy")
        run = subprocess.run(argv, cwd=out, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]


def test_vlm_int8_exports_and_runs(store):
    """Qwen2-VL: decoder calibrated through inputs_embeds; the vision graph gets weight-only INT8."""
    art = store.artifacts("qwen2_vl", True, int8=True)
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["graphs"]["decoder"]["int8"]["activation_qdq"] > 0
    vision = manifest["graphs"]["vision"]["int8"]
    assert vision["activation_qdq"] == 0 and vision["phm_int8_nodes"] > 0
    assert manifest["report"] == "report.md"  # text rows through inputs_embeds (answers: test_vlm_report.py)
    from polygraphy.json import load_json

    for kind in ("vision", "decoder"):
        feed = load_json(str(art / f"{kind}.inputs.json"))[0]
        assert all(np.isfinite(o).all() for o in session(art / f"{kind}.onnx").run(None, feed))


def _rotated_quantizers(model: onnx.ModelProto) -> int:
    """QuantizeLinears whose input is Reshape(MatMul(·, rotation Hadamard)): x·Q (rotate.graph_nodes)."""
    prod, count = _producers(model), 0
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            r = prod.get(n.input[0])
            mm = prod.get(r.input[0]) if r is not None and r.op_type == "Reshape" else None
            count += mm is not None and mm.op_type == "MatMul" and mm.input[1].startswith("rotation_")
    return count


def test_rotation_by_default_and_off_switch(store, tmp_path):
    """--int8 rotates every W8A8 input (a Reshape back from x·Q feeds each QuantizeLinear, no
    smoothing); --no-int8-rotation quantizes x itself and brings SmoothQuant's α search back."""
    on = store.artifacts("llama", True, int8=True)
    summary = json.loads((on / "manifest.json").read_text())["graphs"]["decoder"]["int8"]
    assert (summary["rotated"], summary["smoothed"], summary["activation_qdq"]) == (4, 0, 4)
    model = onnx.load(str(on / "decoder.trt.onnx"))
    assert _rotated_quantizers(model) == 4
    assert {i.name for i in model.graph.initializer} >= {"rotation_32.hadamard", "rotation_32.view"}  # K = 32
    off = tmp_path / "off"
    result = CliRunner().invoke(main, [str(store.checkpoint("llama", True)), "--int8", "--no-int8-rotation",
                                       "--out", str(off)])
    assert result.exit_code == 0, result.output
    summary = json.loads((off / "manifest.json").read_text())["graphs"]["decoder"]["int8"]
    assert summary["rotated"] == 0
    model = onnx.load(str(off / "decoder.trt.onnx"))
    assert _rotated_quantizers(model) == 0
    assert not any(i.name.startswith("rotation_") for i in model.graph.initializer)
    assert json.loads((off / "export_config.json").read_text())["int8"]["rotate"] is False


def test_no_rotation_flag_needs_int8(store):
    result = CliRunner().invoke(main, [str(store.checkpoint("llama", True)), "--no-int8-rotation"])
    assert result.exit_code != 0 and "--no-int8-rotation is only used with --int8" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_weights_only_has_no_activation_qdq(store, tmp_path):
    art = tmp_path / "wo"  # through the CLI flag: --int8 --int8-weights-only = Int8Config(activations=False)
    result = CliRunner().invoke(main, [str(store.checkpoint("llama", True)), "--int8", "--int8-weights-only",
                                       "--out", str(art)])
    assert result.exit_code == 0, result.output
    model = onnx.load(str(art / "decoder.trt.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" not in ops and ops.count("DequantizeLinear") == 8  # the 8 attention weights
    rows = json.loads((art / "report.json").read_text())
    assert rows[-1]["precision"] == "int8-wo"


def test_int8_lm_head_option(store):
    """--int8-lm-head: the (tied) LM head becomes W8A8 too, reading an INT8 copy of the table."""
    art = store.artifacts("llama", True, int8=Int8Config(lm_head=True, report_tokens=64))
    model = onnx.load(str(art / "decoder.trt.onnx"))
    lm_head = [n for n in _w8a8_matmuls(model) if "lm_head" in n.name]
    assert len(lm_head) == 1 and len(_w8a8_matmuls(model)) == 9
    assert sum(n.op_type == "Gather" for n in model.graph.node) >= 1  # the embedding still reads the float table
    rows = json.loads((art / "report.json").read_text())
    assert rows[-1]["metrics"]["logit_cosine"] > 0.99


def test_encoder_int8_report(store):
    """BERT --int8: report.md/.json for an encoder (it had none): sentence-embedding and hidden-state
    cosines of FP16/INT8 to FP32, the INT8 row recomputed here from the exported encoder.onnx."""
    import torch

    from phm.export.report import encoder_metrics
    from phm.trainer import load

    art = store.artifacts("bert", True, int8=Int8Config(report_tokens=64))
    assert json.loads((art / "manifest.json").read_text())["report"] == "report.md"
    rows = {r["precision"]: r["metrics"] for r in json.loads((art / "report.json").read_text())}
    assert rows["fp32"]["embedding_cosine"] == pytest.approx(1.0) and rows["fp32"]["top1_agreement"] is None
    assert 0.95 < rows["int8"]["embedding_cosine"] < 1.0 and rows["fp16"]["embedding_cosine"] > 0.999
    assert "sentence-embedding cosine" in (art / "report.md").read_text()
    # the same held-out sentences (the tiny model has no tokenizer: UTF-8 bytes mod vocab)
    from phm.export.int8 import WINDOW, text_to_ids
    from phm.trainer.data import chatterbot_texts, split_holdout

    model = load(store.checkpoint("bert", True)).eval()
    sess, ref, got, total = session(art / "encoder.onnx"), [], [], 0
    for text in split_holdout(chatterbot_texts())[1]:
        if total >= 64:
            break
        ids = np.array([text_to_ids(text, None, model.config.vocab_size)[:WINDOW]], np.int64)
        if ids.shape[1] < 2:
            continue
        total += ids.shape[1]
        mask = np.ones_like(ids)
        with torch.no_grad():
            ref.append(model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
                       .last_hidden_state[0].numpy())
        got.append(sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0][0])
    expected = encoder_metrics(ref, got)
    assert rows["int8"]["embedding_cosine"] == pytest.approx(expected.embedding_cosine, abs=1e-5)
    assert rows["int8"]["logit_cosine"] == pytest.approx(expected.logit_cosine, abs=1e-5)
