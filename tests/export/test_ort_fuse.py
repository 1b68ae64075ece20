"""The ONNX Runtime file's fused attention (export/ort_fuse.py): which decoders get it, that the graph
keeps the I/O contract and the reference outputs, and that the runtime's shared KV buffer generates
torch's tokens (left-padded batches included) without allocating per step."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from phm.runtime.backend import BackendError
from phm.runtime.generate import GenerationConfig, generate
from phm.runtime.ort_backend import OrtBackend
from phm.runtime.torch_backend import TorchBackend
from phm.trainer import load


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def _io(path) -> tuple:
    g = onnx.load(str(path), load_external_data=False).graph
    return [(i.name, i.type.tensor_type.elem_type) for i in g.input], [o.name for o in g.output]


@pytest.mark.parametrize("arch,phm", [("llama_gqa", False), ("llama_gqa", True), ("qwen2_gqa", False)])
def test_llama_family_attention_is_one_op_per_layer(store, arch, phm):
    art = store.artifacts(arch, phm)
    entry = json.loads((art / "manifest.json").read_text())["graphs"]["decoder"]
    fusion = entry["ort_fusion"]
    assert fusion == {"attention": "GroupQueryAttention", "layers": 2, "packed_qkv": 2,
                      "packed_gate_up": 0 if phm else 2, "skip_norms": 4, "positions": 256, "padding": "right"}
    ops = _ops(art / entry["ort_file"])
    assert ops["GroupQueryAttention"] == 2 and ops["SkipSimplifiedLayerNormalization"] == 4
    assert not {"Softmax", "Expand", "Where"} & set(ops)  # the traced attention and its mask are gone
    assert _io(art / entry["ort_file"]) == _io(art / entry["file"])  # the I/O contract is unchanged
    assert "GroupQueryAttention" not in _ops(art / entry["trt_file"])  # the TensorRT twin keeps standard ops


def test_fused_graph_passes_the_manifests_polygraphy_check(store):
    """commands.sh's ONNX Runtime check, as written: the export's saved inputs (a past of its own
    length, so no shared buffer) against PyTorch's saved outputs, at the manifest's tolerances."""
    art = store.artifacts("qwen2_gqa", False)  # q/k/v biases: the packed Add
    cmd = json.loads((art / "manifest.json").read_text())["commands"]["decoder"]["polygraphy_onnxrt"]
    assert cmd.startswith("polygraphy run decoder.ort.onnx --onnxrt")
    proc = subprocess.run([str(Path(sys.executable).parent / "polygraphy"), *shlex.split(cmd)[1:]], cwd=art,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "PASSED" in proc.stdout + proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("arch,reason", [("gpt2", "gpt2 attention is not fused"),
                                         ("qwen2_vl", "M-RoPE (three rows of positions) is not fused")])
def test_other_decoders_keep_the_traced_attention_and_say_why(store, arch, reason):
    art = store.artifacts(arch, False)
    entry = json.loads((art / "manifest.json").read_text())["graphs"]["decoder"]
    assert entry["ort_fusion"]["attention"] == "traced" and reason in entry["ort_fusion"]["reason"]
    assert "GroupQueryAttention" not in _ops(art / entry["ort_file"])


def test_head_dim_the_kernel_cannot_take_keeps_the_traced_graph(store):
    art = store.artifacts("llama", False)  # hidden 32 / 4 heads: ONNX Runtime's CPU kernel needs multiples of 16
    fusion = json.loads((art / "manifest.json").read_text())["graphs"]["decoder"]["ort_fusion"]
    assert fusion == {"attention": "traced", "reason": "head_dim 8 is not a multiple of 16 (ONNX Runtime's "
                                                       "GroupQueryAttention needs one)"}
    backend = OrtBackend.from_artifacts(art)
    assert backend.kv_capacity == 0
    ids = np.array([[5, 17, 33, 9]])
    want = generate(TorchBackend(load(store.checkpoint("llama", False))), ids, GenerationConfig(max_new_tokens=6)).tokens
    np.testing.assert_array_equal(generate(backend, ids, GenerationConfig(max_new_tokens=6)).tokens, want)


@pytest.mark.parametrize("arch,phm", [("qwen2_gqa", False), ("llama_gqa", True)])
def test_shared_buffer_greedy_equals_torch_on_a_ragged_batch(store, arch, phm):
    """Rows of three lengths (left-padded, as the generation loop hands them over) on qwen2 (biases,
    packed q/k/v and gate/up) and a PHM llama: every row's tokens equal transformers' own."""
    art = store.artifacts(arch, phm)
    backend = OrtBackend.from_artifacts(art)
    assert backend.kv_capacity == 256
    ids = np.array([[5, 17, 33, 9, 101, 7], [0, 0, 44, 12, 7, 3], [0, 0, 0, 0, 8, 250]])
    mask = (ids != 0).astype(np.int64)
    cfg = GenerationConfig(max_new_tokens=12)
    want = generate(TorchBackend(load(store.checkpoint(arch, phm))), ids, cfg, attention_mask=mask).tokens
    np.testing.assert_array_equal(generate(backend, ids, cfg, attention_mask=mask).tokens, want)


def test_decode_appends_in_place_and_allocates_nothing_per_step(store):
    backend = OrtBackend.from_artifacts(store.artifacts("llama_gqa", False))
    ids = np.array([[5, 17, 33]])
    logits = backend.prefill(ids, np.ones_like(ids))
    buffers = {name: v.data_ptr() for name, v in backend.cache.items()}
    step_io = {name: v.data_ptr() for name, v in backend.decode_io.items()}
    mask = np.ones((1, 3), np.int64)
    for _ in range(4):
        mask = np.concatenate([mask, [[1]]], axis=1)
        logits = backend.decode(logits.argmax(-1)[:, None], mask)
    assert {name: v.data_ptr() for name, v in backend.cache.items()} == buffers
    assert {name: v.data_ptr() for name, v in backend.decode_io.items()} == step_io
    assert backend.lengths.tolist() == [7]


def test_generation_sizes_the_buffer_to_the_request(store):
    """generate() reserves prompt + new tokens (reset(max_tokens)): the buffers take that many
    positions, not the exported context's 256, and a decode past them is one clear error."""
    backend = OrtBackend.from_artifacts(store.artifacts("llama_gqa", False))
    ids = np.array([[5, 17, 33]])
    tokens = generate(backend, ids, GenerationConfig(max_new_tokens=5)).tokens
    assert {v.shape()[2] for v in backend.cache.values()} == {8}
    backend.reset()  # no reservation: the whole exported context
    backend.prefill(ids, np.ones_like(ids))
    assert {v.shape()[2] for v in backend.cache.values()} == {256}
    backend.reset(max_tokens=4)
    logits = backend.prefill(ids, np.ones_like(ids))
    assert logits.argmax(-1).tolist() == tokens[:, 0].tolist()
    backend.decode(logits.argmax(-1)[:, None], np.ones((1, 4), np.int64))
    with pytest.raises(BackendError, match=r"5 tokens exceed the KV buffer of 4 positions reserved by reset\(max_tokens=4\)"):
        backend.decode(np.array([[7]]), np.ones((1, 5), np.int64))


def test_generation_past_the_buffer_is_one_clear_error(store):
    backend = OrtBackend.from_artifacts(store.artifacts("llama_gqa", False))
    backend.kv_capacity = 4
    with pytest.raises(BackendError, match="5 tokens exceed the KV buffer of 4 positions"):
        backend.prefill(np.array([[5, 17, 33, 9, 2]]), np.ones((1, 5), np.int64))


def test_smollm2_fused_greedy_equals_transformers(tmp_path):
    """The real SmolLM2-135M (30 layers, 9 query / 3 KV heads of 64) exported in fp32: every layer
    fused, and phm-run's backend generates transformers' greedy tokens on a left-padded batch."""
    from phm.export import ExportConfig, export_model
    from phm.trainer.models import smollm2_dir

    art = export_model(smollm2_dir(), ExportConfig(), tmp_path / "art")
    fusion = json.loads((art / "manifest.json").read_text())["graphs"]["decoder"]["ort_fusion"]
    assert fusion["attention"] == "GroupQueryAttention" and fusion["layers"] == 30 and fusion["packed_qkv"] == 30
    ids = np.array([[1, 504, 2365, 3470, 5194, 17719, 690, 260, 23790, 2767, 30],
                    [0, 0, 0, 0, 1, 504, 2365, 3470, 5194, 17719, 690]])
    mask = (np.arange(ids.shape[1])[None] >= np.array([[0], [4]])).astype(np.int64)
    cfg = GenerationConfig(max_new_tokens=16)
    want = generate(TorchBackend(load(smollm2_dir())), ids, cfg, attention_mask=mask).tokens
    np.testing.assert_array_equal(generate(OrtBackend.from_artifacts(art), ids, cfg, attention_mask=mask).tokens, want)
