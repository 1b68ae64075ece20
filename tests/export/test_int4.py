"""phm-export --int4 on tiny models of every architecture: the graphs (portable and ONNX Runtime's)
compute exactly the quantized model — a PyTorch model holding the same dequantized weights gives
the same outputs on the export's own reference inputs — and hold what TensorRT and ONNX Runtime
need (opset 21 blocked INT4 DequantizeLinear, INT4 PHM nodes, MatMulNBits after lowering)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from polygraphy.comparator import RunResults
from polygraphy.json import load_json

from phm.export import ExportConfig, Int4Config
from phm.export.cli import main
from phm.export.graphs import graph_specs
from phm.export.quantize_int4 import block_group, dequantize_blocks, quantize_blocks_int4
from phm.export.refs import run_torch
from phm.trainer import PHMLinear, load
from phm.trt_plugins import spec
from phm.trt_plugins.quant import dequantize_cores_int4, quantize_cores_int4

GROUP = 32
ARCHS = ("llama", "qwen2", "gpt2", "bert", "qwen2_vl", "qwen2_5_vl", "llava")


def _session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")  # what phm-run sets
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _round_fp16(module, args):
    return tuple(a.half().float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _graph_cores(art) -> tuple[set, set]:
    """The INT4 PHM cores of every graph of an export (packed bytes) and the group sizes they use."""
    packed, groups = set(), set()
    for path in art.glob("*.trt.onnx"):
        model = onnx.load(str(path))
        inits = _initializers(model)
        for node in (n for n in model.graph.node if n.domain == spec.DOMAIN):
            groups.add({a.name: a.i for a in node.attribute}["group_size"])
            for name in node.input:
                if name in inits and inits[name].data_type == onnx.TensorProto.INT8 and len(inits[name].dims) == 3:
                    packed.add(onnx.numpy_helper.to_array(inits[name]).tobytes())
    return packed, groups


def dequantized_model(model_dir, art, group: int = GROUP):
    """The checkpoint's model with every dense linear's weight (the LM head and embeddings excepted) and
    every PHM core replaced by its INT4 dequantization (the exporter's rounding), and PHM inputs and
    outputs rounded to fp16 (INT4 cores take fp16 activations: an fp16 island in an fp32 graph)."""
    model = load(model_dir)
    model.set_attn_implementation("eager")
    head = model.get_output_embeddings()
    packed, groups = _graph_cores(art)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, PHMLinear):
                # the group of the node holding it (a fused PHMFFN shares one): the one whose rounding the graph holds
                g = next(g for g in sorted(groups, reverse=True) if module.cores.shape[2] % g == 0
                         and quantize_cores_int4(module.cores, g)[0].numpy().tobytes() in packed)
                module.cores.copy_(dequantize_cores_int4(*quantize_cores_int4(module.cores, g), g))
                module.register_forward_pre_hook(_round_fp16)
                module.register_forward_hook(lambda m, a, y: y.half().float())
            elif module is not head and type(module).__name__ in ("Linear", "Conv1D"):
                w = module.weight.detach().float()
                kn = w.T.numpy() if type(module).__name__ == "Linear" else w.numpy()   # the MatMul's (K, N)
                g = block_group(kn.shape[0], group)
                deq = dequantize_blocks(*quantize_blocks_int4(kn, 0, g), kn.shape, 0, g)
                module.weight.copy_(torch.from_numpy(deq.T.copy() if type(module).__name__ == "Linear" else deq))
    return model


@pytest.fixture(scope="module")
def int4_exports(store):
    def get(arch: str, phm: bool = True):
        return store.checkpoint(arch, phm), store.artifacts(arch, phm, int4=Int4Config(group=GROUP, method="rtn"))
    return get


def _errors(art, graph: dict, feeds: list, outputs: list) -> dict:
    """Max |graph − torch| / max |torch| per file of one graph kind, over its reference inputs `feeds`."""
    out = {}
    for f in {graph["file"], graph["ort_file"]}:
        sess = _session(art / f)
        names = [o.name for o in sess.get_outputs()]
        worst = 0.0
        for feed, ref in zip(feeds, outputs):
            for name, got in zip(names, sess.run(names, feed)):
                r = np.asarray(ref[name], np.float64)
                worst = max(worst, float(np.abs(got.astype(np.float64) - r).max() / (np.abs(r).max() or 1.0)))
        out[f] = worst
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("phm", [False, True], ids=["dense", "phm"])
def test_int4_graph_is_the_dequantized_model(int4_exports, arch, phm):
    """Every graph of the export (both files) == a PyTorch model holding the dequantized weights, on the
    export's saved reference inputs: to fp32 rounding for dense models; PHM nodes compute in fp16
    (spec.py), so to fp16 rounding there (the ONNX Runtime file computes its lowered cores in fp32,
    lower.py, which stays within that). The float model differs by the INT4 error (several times that)."""
    ckpt, art = int4_exports(arch, phm)
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["precision"] == "int4"
    model = dequantized_model(ckpt, art)
    tol = 2e-3 if phm else 2e-5
    for spec_ in graph_specs(model):
        graph = manifest["graphs"][spec_.kind]
        feeds = load_json(str(art / graph["inputs"]))
        outputs = run_torch(spec_, [{k: torch.from_numpy(np.asarray(v)) for k, v in feed.items()} for feed in feeds])
        errors = _errors(art, graph, feeds, outputs)
        assert max(errors.values()) <= tol, (spec_.kind, errors)
        float_outputs = [RunResults.load(str(art / graph["ref"]))[0][1][i] for i in range(len(feeds))]
        quant_error = max(float(np.abs(np.asarray(q[n]) - np.asarray(f[n])).max() / (np.abs(f[n]).max() or 1))
                          for q, f in zip(outputs, float_outputs) for n in q)
        if graph["int4"]["dense_int4"] + graph["int4"]["phm_int4_nodes"]:  # (an embed graph has no linear)
            assert quant_error > 5 * tol, (spec_.kind, quant_error)  # the weights really were rounded


def _initializers(model: onnx.ModelProto) -> dict:
    return {i.name: i for i in model.graph.initializer}


def test_int4_graph_contents(int4_exports):
    """TensorRT's file: opset 21, every dense linear (not the LM head) a blocked INT4 DequantizeLinear
    (axis 0, block = group) into its MatMul, INT4 PHM nodes with group_size; ONNX Runtime's file: the PHM
    nodes lowered to MatMulNBits reading the same bytes; one copy of each weight."""
    _, art = int4_exports("llama", True)
    trt = onnx.load(str(art / "decoder.trt.onnx"))
    assert {o.domain: o.version for o in trt.opset_import}[""] == 21 and not trt.functions
    inits = _initializers(trt)
    dq = [n for n in trt.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 8  # q/k/v/o of two layers; the tied LM head stays float
    for node in dq:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        w, s = inits[node.input[0]], inits[node.input[1]]
        assert w.data_type == onnx.TensorProto.INT4 and attrs == {"axis": 0, "block_size": GROUP}
        assert list(s.dims) == [w.dims[0] // GROUP, w.dims[1]] and s.data_type == onnx.TensorProto.FLOAT
        consumer = next(n for n in trt.graph.node if node.output[0] in n.input)
        assert consumer.op_type == "MatMul"
    phm = [n for n in trt.graph.node if n.domain == spec.DOMAIN]
    assert phm and all({a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}["weight_format"] == b"int4"
                       for n in phm)
    ort_model = onnx.load(str(art / "decoder.ort.onnx"))
    ops = [n.op_type for n in ort_model.graph.node]
    assert ops.count("MatMulNBits") == 2 * len(phm) and "PHMFFN" not in ops  # gate|up and down per FFN
    assert not ort_model.functions


def test_int4_fp16_export_size(store, int4_exports):
    """--int4 --fp16: fp16 scales into fp16 MatMuls, and the files far below the fp32 export's."""
    art = store.artifacts("llama", True, fp16=True, int4=Int4Config(group=GROUP, method="rtn"))
    trt = onnx.load(str(art / "decoder.trt.onnx"))
    scales = [_initializers(trt)[n.input[1]] for n in trt.graph.node if n.op_type == "DequantizeLinear"]
    assert scales and all(s.data_type == onnx.TensorProto.FLOAT16 for s in scales)
    fp32 = json.loads((store.artifacts("llama", True) / "manifest.json").read_text())["onnx_bytes"]
    int4 = json.loads((art / "manifest.json").read_text())["onnx_bytes"]
    assert int4 < 0.7 * fp32  # tiny model: the graph structure and the float embedding table are most of it


def test_cli_int4_flags(store, tmp_path):
    runner = CliRunner()
    ckpt = store.checkpoint("llama", True)
    result = runner.invoke(main, [str(ckpt), "--int4", "--int8", "--out", str(tmp_path / "a")])
    assert result.exit_code != 0 and "exclusive" in result.output and not (tmp_path / "a").exists()
    result = runner.invoke(main, [str(ckpt), "--int4-group", "64", "--out", str(tmp_path / "b")])
    assert result.exit_code != 0 and "--int4-group is only used with --int4" in result.output
    result = runner.invoke(main, [str(ckpt), "--int4-accuracy", "4", "--out", str(tmp_path / "b")])
    assert result.exit_code != 0 and "--int4-accuracy is only used with --int4" in result.output
    result = runner.invoke(main, [str(ckpt), "--int4", "--int4-group", "48", "--out", str(tmp_path / "c")])
    assert result.exit_code != 0 and not (tmp_path / "c").exists()
    out = tmp_path / "d"
    result = runner.invoke(main, [str(ckpt), "--int4", "--int4-group", "32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "int4" and manifest["graphs"]["decoder"]["int4"]["group"] == 32
    assert manifest["memory_plan"]["precision"] == "int4"  # the --target plan counts half a byte per weight
    assert (out / manifest["report"]).is_file() and "INT4 accuracy report" in (out / manifest["report"]).read_text()
    assert "INT4 is weight-only" in (out / "commands.sh").read_text()


def test_int4_config_validation(tmp_path):
    with pytest.raises(ValueError, match="exclusive"):
        ExportConfig(int8=True, int4=True)
    with pytest.raises(ValueError, match="int4.group"):
        Int4Config(group=48)
    with pytest.raises(ValueError, match="int4.method"):
        Int4Config(method="gptq2")
    config = ExportConfig(int4=Int4Config(group=64, method="awq"))
    (tmp_path / "c.json").write_text(config.to_json())
    assert config.precision == "int4" and ExportConfig.from_json(tmp_path / "c.json") == config


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_int4_greedy_tokens_equal_the_dequantized_model(int4_exports, arch):
    """phm-run's ONNX Runtime backend on the --int4 export (MatMulNBits after ONNX Runtime's fusion, accuracy
    level 1) generates the tokens the dequantized PyTorch model generates."""
    from phm.runtime.generate import GenerationConfig, generate
    from phm.runtime.ort_backend import OrtBackend, _graph_facts
    from phm.runtime.torch_backend import TorchBackend

    ckpt, art = int4_exports(arch, False)
    ids, cfg = np.array([[5, 17, 33, 9, 101]]), GenerationConfig(max_new_tokens=24)
    backend = OrtBackend.from_artifacts(art)
    ours = generate(backend, ids, cfg).tokens
    ref = generate(TorchBackend(dequantized_model(ckpt, art)), ids, cfg).tokens
    assert ours.tolist() == ref.tolist()
    ort_file = json.loads((art / "manifest.json").read_text())["graphs"]["decoder"]["ort_file"]
    assert _graph_facts(art / ort_file)[0] == "int4"  # the session options that fuse into MatMulNBits


def test_smollm2_int4_graph_is_the_dequantized_model(tmp_path):
    """The real SmolLM2-135M (30 layers, group 128 and 64 blocks) exported with --int4: its decoder graph
    equals the PyTorch model holding the dequantized weights on the export's reference inputs, and
    phm-run's backend (fused attention on the shared KV buffer) generates that model's greedy tokens."""
    from phm.runtime.generate import GenerationConfig, generate
    from phm.runtime.ort_backend import OrtBackend
    from phm.runtime.torch_backend import TorchBackend

    from phm.export import ExportConfig, export_model
    from phm.trainer.models import smollm2_dir

    art = export_model(smollm2_dir(), ExportConfig(int4=Int4Config(method="rtn", report_tokens=64)), tmp_path / "art")
    graph = json.loads((art / "manifest.json").read_text())["graphs"]["decoder"]
    assert graph["int4"]["dense_int4"] == 210 and graph["int4"]["float_kept"] == 0  # 7 linears × 30 layers
    model = dequantized_model(smollm2_dir(), art, group=128)
    spec_ = next(s for s in graph_specs(model) if s.kind == "decoder")
    feeds = load_json(str(art / graph["inputs"]))
    errors = _errors(art, graph, feeds,
                     run_torch(spec_, [{k: torch.from_numpy(np.asarray(v)) for k, v in feed.items()} for feed in feeds]))
    assert max(errors.values()) <= 1e-4, errors
    assert graph["ort_fusion"]["attention"] == "GroupQueryAttention" and graph["ort_fusion"]["layers"] == 30
    ids, cfg = np.array([[1, 504, 2365, 3470, 5194, 17719, 690, 260, 23790, 2767, 30]]), GenerationConfig(max_new_tokens=16)
    want = generate(TorchBackend(model), ids, cfg).tokens
    np.testing.assert_array_equal(generate(OrtBackend.from_artifacts(art), ids, cfg).tokens, want)


def test_int4_accuracy_4_runs_int8_activations_where_asked(store):
    """--int4-accuracy 4: the manifest says so, the lowered PHM cores' MatMulNBits carry level 4, and
    phm-run's session computes with INT8 activations (logits move off the level-1 export's, a little)."""
    import onnx

    from phm.runtime.ort_backend import OrtBackend

    art1 = store.artifacts("llama", True, int4=Int4Config(group=GROUP, method="rtn"))
    art4 = store.artifacts("llama", True, int4=Int4Config(group=GROUP, method="rtn", accuracy=4))
    m1, m4 = (json.loads((a / "manifest.json").read_text()) for a in (art1, art4))
    assert (m1["int4_accuracy"], m4["int4_accuracy"]) == (1, 4)
    graph = onnx.load(str(art4 / m4["graphs"]["decoder"]["ort_file"]), load_external_data=False).graph
    levels = [a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"]
    assert len(levels) == 4 and set(levels) == {4}  # gate|up and down of two PHM FFNs
    ids = np.array([[5, 17, 33, 9, 101]])
    logits = [OrtBackend.from_artifacts(a).prefill(ids, np.ones_like(ids)) for a in (art1, art4)]
    diff = np.abs(logits[0] - logits[1]).max() / np.abs(logits[0]).max()
    assert 0 < diff < 0.05
    with pytest.raises(ValueError, match="int4.accuracy must be one of 1, 4"):
        Int4Config(accuracy=2)


def test_ort_file_computes_fp32_islands_in_fp32(int4_exports):
    """An fp32 export wraps INT4 PHM cores in fp16 islands (the plugins take fp16); the ONNX Runtime
    file's lowered cores read the island's fp32 input instead: no fp16 Cast is left there, while the
    TensorRT file keeps its islands."""
    import onnx

    _, art = int4_exports("llama", True)
    graph = json.loads((art / "manifest.json").read_text())["graphs"]["decoder"]

    def fp16_casts(name):
        nodes = onnx.load(str(art / name), load_external_data=False).graph.node
        return sum(1 for n in nodes if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16
                                                                    for a in n.attribute))
    assert fp16_casts(graph["trt_file"]) >= 2 and fp16_casts(graph["ort_file"]) == 0
