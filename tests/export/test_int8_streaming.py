"""--int8 without the model in memory: calibration captures the rows each W8A8 linear reads from the
PyTorch model streamed from the checkpoint (capture.py), streamed weights are quantized when the data
file is written (DerivedWeight), and the report runs FP32/FP16 streamed too.

The model has tensors above the small-tensor threshold (placeholders in the trace, streamed), as in
test_streaming.py."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from phm.export import ExportConfig, Int8Config, export_model
from phm.export import api as api_mod
from phm.export.bind import bind_weights
from phm.export.calibrate import per_channel_weight_scales, quantize_symmetric
from phm.export.capture import capture, match_modules
from phm.export.graphs import cache_geometry, export_graph, graph_specs
from phm.export.quantize import plan_int8
from phm.export.source import ModelSource
from phm.export.weights import ArrayTensor, DataFile, DerivedWeight, Shared, StreamedWeight

from onnxkit import external_spans
from ortloop import collect_activations
from test_streaming import _wide_qwen2

PROMPTS = [[5, 9, 14, 3, 22, 7, 7, 1], [30, 31], [4, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48]]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return _wide_qwen2(tmp_path_factory.mktemp("wide8") / "model")


def _bound_graph(src: ModelSource, tmp_path):
    src.model.set_attn_implementation("eager")
    spec = [s for s in graph_specs(src.model) if s.kind == "decoder"][0]
    with src.tracing(torch.float32):
        export_graph(spec, tmp_path / "graph.onnx", weights=False)
    return spec, bind_weights(onnx.load(str(tmp_path / "graph.onnx")), spec, src)


def _feed(model, ids: list[int]) -> dict:
    layers, kv_heads, head_dim = cache_geometry(model)
    t = len(ids)
    feed = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, t), np.int64),
            "position_ids": np.arange(t, dtype=np.int64)[None]}
    for i in range(layers):
        for kind in ("key", "value"):
            feed[f"past_key_values.{i}.{kind}"] = np.zeros((1, kv_heads, 0, head_dim), np.float32)
    return feed


@pytest.mark.parametrize("batch_tokens", [4096, 8])
def test_captured_rows_are_the_graph_tensors(wide, tmp_path, monkeypatch, batch_tokens):
    """The rows capture() hands over for each W8A8 input (padded batches, streamed weights; one batch,
    or one per prompt with rows waiting on disk) are the values of that graph tensor when ONNX Runtime
    runs the float graph on the prompts one by one."""
    from phm.export import capture as capture_mod

    monkeypatch.setattr(capture_mod, "BATCH_TOKENS", batch_tokens)
    src = ModelSource.from_files(wide)
    spec, graph = _bound_graph(src, tmp_path)
    plan = plan_int8(graph)
    names = plan.activation_tensors
    assert len(names) == 4  # per layer: q/k/v's input and o's input
    assert all(isinstance(lin.weight, StreamedWeight) for lin in plan.linears)
    targets = match_modules(plan, src.model, src)
    assert sorted(type(m).__name__ for m in targets.values()) == ["Linear"] * 4
    got = {}
    batches = []
    with src.streaming() as model:
        ran = capture(model, targets, PROMPTS, rows=1000, done=lambda name, x: got.setdefault(name, x),
                      progress=lambda i, n: batches.append(n))
    assert ran == len(PROMPTS) and set(got) == set(names)
    assert batches[-1] == (1 if batch_tokens == 4096 else len(PROMPTS))
    # the ORT reference runs the same graph with its weights loaded
    for t in graph.tensors().values():
        if isinstance(getattr(t, "_values", None), StreamedWeight):
            t.values = t._values.load()
    import onnx_graphsurgeon as gs

    from phm.export.reference import attach_functions

    want = collect_activations(attach_functions(gs.export_onnx(graph)), names,
                               [_feed(src.model, p) for p in PROMPTS], {})
    for name in names:
        assert got[name].shape == (sum(map(len, PROMPTS)), want[name].shape[1])
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)


def test_capture_hands_over_at_the_row_budget(wide):
    src = ModelSource.from_files(wide)
    model = src.model
    target = {"x": model.model.layers[0].self_attn.o_proj}
    seen = []
    with src.streaming() as m:
        capture(m, target, PROMPTS, rows=10, done=lambda name, x: seen.append(x.shape))
    assert seen == [(10, 576)]  # handed over once, cut to the budget


def test_int8_export_never_loads_the_model(wide, tmp_path, monkeypatch):
    """--int8 on a checkpoint: the whole-model loader is never called; the INT8 weights in the data file
    are the per-channel rounding of the (rotated) checkpoint weights; greedy tokens stay the model's."""
    def refuse(*args, **kwargs):
        raise AssertionError("the exporter loaded the whole model")

    monkeypatch.setattr(api_mod, "load", refuse)
    config = ExportConfig(int8=Int8Config(report_tokens=64, rotate=False), external_data_mb=0)
    art = export_model(wide, config, tmp_path / "art")
    manifest = json.loads((art / "manifest.json").read_text())
    summary = manifest["graphs"]["decoder"]["int8"]
    assert summary["attention:w8a8"] == 8 and summary["activation_qdq"] == 4 and summary["calib_prompts"] > 0
    spans = external_spans(art / "decoder.trt.onnx")
    model = onnx.load(str(art / "decoder.trt.onnx"), load_external_data=False)
    names = {i.name for i in model.graph.initializer}
    int8_names = sorted(n for n in names if n.endswith(".weight_int8"))
    assert len(int8_names) == 14  # q, k, v, o + gate, up, down (weight-only) per layer
    # one of them, read back from the data file, is the rounding of the checkpoint weight (smoothing off
    # and no rotation: the stored weight is Wᵀ itself, per output channel)
    from safetensors import safe_open

    wq_name = next(n for n in int8_names if "layers.1" in n and "down_proj" in n)
    offset, length = spans[wq_name]
    data = np.fromfile(art / "model.onnx.data", dtype=np.int8, count=length, offset=offset)
    w = None
    for path in sorted(wide.glob("*.safetensors")):
        with safe_open(str(path), "np") as f:
            if "model.layers.1.mlp.down_proj.weight" in f.keys():
                w = f.get_tensor("model.layers.1.mlp.down_proj.weight").T
    assert w is not None
    scales = per_channel_weight_scales(w, axis=1)
    np.testing.assert_array_equal(data.reshape(w.shape), quantize_symmetric(w, scales[None, :]))
    rows = {r["precision"]: r for r in json.loads((art / "report.json").read_text())}
    assert set(rows) == {"fp32", "fp16", "int8"}
    assert rows["fp32"]["metrics"]["top1_agreement"] == 1.0
    assert rows["int8"]["metrics"]["logit_cosine"] > 0.95


def test_derived_weights_compute_once_per_write(tmp_path):
    calls = []

    def both():
        calls.append(1)
        return np.arange(6, dtype=np.int8).reshape(2, 3), np.ones(2, np.float32)

    shared = Shared(both)
    q = DerivedWeight(lambda: shared.part(0), (2, 3), np.int8, ("q", 0))
    s = DerivedWeight(lambda: shared.part(1), (2,), np.float32, ("s", 0))
    data = DataFile(tmp_path / "d.data")
    data.add([q, s, StreamedWeight(ArrayTensor(np.zeros(300, np.float32)))])
    assert len(calls) == 1 and q.location == "d.data" and s.offset > q.offset
    raw = (tmp_path / "d.data").read_bytes()
    assert raw[:6] == bytes(range(6))
    with pytest.raises(ValueError):
        DerivedWeight(lambda: np.zeros(3), (2,), np.float32, ("bad",)).load()


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_report_shows_the_teacher(tmp_path, arch, caplog):
    """A checkpoint made from a dense model names it (phm_config.json "teacher"); the INT8 report puts
    the teacher's FP32 row first: a decoder's perplexity is the dense model's own on the same text.
    A teacher that is gone is a warning and no row."""
    import shutil

    from phm.export.int8 import heldout_windows
    from phm.export.report import perplexity
    from phm.trainer import PHMConfig, drop_dense, inject_phm, load, save_phm_checkpoint, set_lambda
    from phm.trainer.checkpoint import read_phm_config
    from tinymodels import save_tiny_model

    dense = save_tiny_model(arch, tmp_path / "dense")
    model = load(dense)
    config = PHMConfig()
    targets = inject_phm(model, config)
    set_lambda(model, 1.0)
    drop_dense(model)
    with torch.no_grad():  # a student that is not the projection of its teacher
        for name, p in model.named_parameters():
            if name.endswith(".cores"):
                p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    ckpt = save_phm_checkpoint(model, config, targets, tmp_path / "phm", source_dir=dense)
    assert read_phm_config(ckpt)["teacher"] == str(dense.resolve())
    int8 = ExportConfig(int8=Int8Config(report_tokens=64))
    rows = json.loads((export_model(ckpt, int8, tmp_path / "art") / "report.json").read_text())
    assert [(r["model"], r["precision"]) for r in rows][0] == ("teacher (dense)", "fp32")
    assert [r["model"] for r in rows[1:]] == ["PHM"] * 3
    if arch == "llama":
        teacher = load(dense)
        vocab = teacher.config.vocab_size
        windows = heldout_windows(None, vocab, 64)
        with torch.no_grad():
            logits = np.concatenate([teacher(input_ids=torch.from_numpy(w)).logits[0, :-1].numpy() for w in windows])
        want = perplexity(logits, np.concatenate([w[0, 1:] for w in windows]))
        assert rows[0]["metrics"]["perplexity"] == pytest.approx(want, rel=1e-4)
        assert rows[0]["metrics"]["logit_cosine"] < 0.999  # against the student's FP32, not itself
        assert rows[1]["metrics"]["perplexity"] != pytest.approx(want, rel=1e-3)
    shutil.rmtree(dense)
    rows = json.loads((export_model(ckpt, int8, tmp_path / "art2") / "report.json").read_text())
    assert [r["model"] for r in rows] == ["PHM"] * 3
    assert "no teacher row" in caplog.text
