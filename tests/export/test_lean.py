"""lean_graph: the traced shape arithmetic folds into constants, outputs stay those of the plain graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from ortloop import manifest

from phm.export.lean import lean_graph
from phm.export.lower import lower_phm
from phm.trt_plugins import spec

# (arch, PHM?, graph): every decoder the runtime serves, and the vision/encoder graphs it also loads.
CASES = [("llama", False, "decoder"), ("llama", True, "decoder"), ("qwen2", True, "decoder"),
         ("gpt2", True, "decoder"), ("qwen2_5_vl", True, "decoder"), ("qwen2_vl", True, "decoder"),
         ("llava", True, "decoder"), ("qwen2_5_vl", True, "vision"), ("llava", True, "vision"),
         ("bert", True, "encoder")]


def _session(model: onnx.ModelProto, optimized: str | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if optimized:
        opts.optimized_model_filepath = optimized
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _other_shapes(sess: ort.InferenceSession, batch: int, seq: int, past: int, rng) -> dict:
    """Decoder feeds at a batch/sequence/past the export never traced (a row left-padded)."""
    feeds = {}
    for inp in sess.get_inputs():
        if inp.name == "input_ids":
            feeds[inp.name] = rng.integers(0, 200, (batch, seq)).astype(np.int64)
        elif inp.name == "inputs_embeds":
            feeds[inp.name] = rng.standard_normal((batch, seq, inp.shape[2])).astype(np.float32)
        elif inp.name == "attention_mask":
            mask = np.ones((batch, past + seq), np.int64)
            mask[0, 0] = 0
            feeds[inp.name] = mask
        elif inp.name == "position_ids":
            pos = np.broadcast_to(np.arange(past, past + seq), (batch, seq))
            feeds[inp.name] = np.ascontiguousarray(np.broadcast_to(pos, (3, batch, seq)) if len(inp.shape) == 3
                                                   else pos).astype(np.int64)
        elif inp.name.startswith("past_key_values."):
            _, heads, _, dim = inp.shape
            feeds[inp.name] = rng.standard_normal((batch, heads, past, dim)).astype(np.float32)
    return feeds


@pytest.mark.parametrize("arch,phm,kind", CASES)
def test_lean_graph_equals_plain(store, arch, phm, kind):
    from polygraphy.json import load_json

    art = store.artifacts(arch, phm)
    path = art / f"{kind}.onnx"
    plain = onnx.load(str(path))
    lower_phm(plain)
    model = onnx.load(str(path))
    lower_phm(model)
    before = len(model.graph.node)
    dropped = lean_graph(model)
    assert dropped == before - len(model.graph.node) >= 0
    onnx.checker.check_model(model)
    assert {o.name for o in model.graph.output} == {o.name for o in plain.graph.output}
    if kind == "decoder":  # every traced decoder has reshape chains to fold
        assert dropped > 0
    want_sess, got_sess = _session(plain), _session(model)
    feed_sets = [{k: np.asarray(v) for k, v in f.items()}
                 for f in load_json(str(art / manifest(art)["graphs"][kind]["inputs"]))]  # prefill, decode
    if kind == "decoder":
        rng = np.random.default_rng(0)
        feed_sets += [_other_shapes(want_sess, *shape, rng) for shape in [(3, 2, 5), (1, 1, 9), (2, 4, 0)]]
    for feeds in feed_sets:
        for got, want in zip(got_sess.run(None, feeds), want_sess.run(None, feeds)):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_lean_drops_most_of_the_per_step_nodes(store, tmp_path):
    """Counted after ORT's own optimisation (what a decode step runs): the Llama decoder's
    Shape/Gather/Unsqueeze/Concat chains, GQA's Equal/Where and rotate_half's Neg are gone, the
    node count drops > 30 %."""
    art = store.artifacts("llama", True)
    counts = {}
    for lean in (False, True):
        model = onnx.load(str(art / "decoder.onnx"))
        lower_phm(model)
        if lean:
            lean_graph(model)
        out = str(tmp_path / f"opt-{lean}.onnx")
        _session(model, out)
        counts[lean] = [n.op_type for n in onnx.load(out).graph.node]
    assert len(counts[True]) < 0.7 * len(counts[False]), (len(counts[False]), len(counts[True]))
    chains = ("Shape", "Gather", "Unsqueeze", "Concat", "Equal", "Where")
    left = {op: (counts[False].count(op), counts[True].count(op)) for op in chains}
    assert sum(b for _, b in left.values()) < 0.4 * sum(a for a, _ in left.values()), left
    assert counts[False].count("Neg") > 0 == counts[True].count("Neg")  # rotate_half is one MatMul now


def test_graph_it_cannot_infer_is_left_unchanged(store):
    """Unlowered PHM nodes (com.phm ops with no shape inference): nothing is folded, nothing breaks."""
    model = onnx.load(str(store.artifacts("llama", True) / "decoder.onnx"))
    assert any(n.domain == spec.DOMAIN for n in model.graph.node)
    before = model.SerializeToString()
    assert lean_graph(model) == 0
    assert model.SerializeToString() == before


def test_lean_fp16_graph_equals_plain(store):
    """--fp16 export: the folded constants keep int64 shapes, rotate_half's permutation is fp16."""
    from polygraphy.json import load_json

    art = store.artifacts("llama", True, fp16=True)
    plain, model = onnx.load(str(art / "decoder.onnx")), onnx.load(str(art / "decoder.onnx"))
    lower_phm(plain)
    lower_phm(model)
    assert lean_graph(model) > 0
    want_sess, got_sess = _session(plain), _session(model)
    for feeds in load_json(str(art / "decoder.inputs.json")):
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        for got, want in zip(got_sess.run(None, feeds), want_sess.run(None, feeds)):
            assert got.dtype == want.dtype
            np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-3, atol=1e-3)
