"""The streaming exporter: weights go from the checkpoint's files to the one data file block by block,
the trace never holds them, and the result is the model's (its greedy tokens and reference outputs).

The tiny models of the other tests have every tensor under the small-tensor threshold, so they carry
real values through the trace; the model here has tensors above it (placeholders in the trace,
streamed at write time, read block by block for the reference outputs), several of one shape."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from phm.export import ExportConfig, export_model
from phm.export import source as source_mod
from phm.export import weights as weights_mod
from phm.export.source import SMALL_BYTES, ModelSource
from phm.export.weights import DataFile, SafetensorsIndex, StreamedWeight

from onnxkit import external_spans
from ortloop import greedy, torch_greedy


def _wide_qwen2(out):
    """A 2-layer Qwen2 whose q/o (576²), MLP and untied head are each above SMALL_BYTES in fp32."""
    import transformers

    from tinymodels import save_char_tokenizer

    cfg = transformers.Qwen2Config(vocab_size=640, hidden_size=576, intermediate_size=1152, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    model.save_pretrained(out, max_shard_size="4MB")  # several shards, as real checkpoints come
    save_char_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return _wide_qwen2(tmp_path_factory.mktemp("wide") / "model")


def test_structure_is_built_without_reading_a_weight(wide):
    src = ModelSource.from_files(wide)
    large = [p for p in src.model.parameters() if p.numel() * 4 > SMALL_BYTES]
    assert large and all(p.is_meta for p in large)
    index = SafetensorsIndex(wide)
    assert len(list(index.keys())) == len(src.sources)
    assert {s.path for s in src.sources.values()} == {str(p) for p in wide.glob("*.safetensors")}


def test_streamed_export_is_the_model(wide, tmp_path):
    art = export_model(wide, ExportConfig(external_data_mb=0), tmp_path / "art")
    ext = external_spans(art / "decoder.onnx")
    index = SafetensorsIndex(wide)
    # every checkpoint tensor over 1 KiB is in the data file once (tensors of equal values, such as
    # freshly initialised norms and biases, once between them: the exporter merges equal initializers)
    stored = {(index[k].shape, index[k].load().tobytes()) for k in index.keys()
              if int(np.prod(index[k].shape)) * 4 > 1024}
    spans = set(ext.values())
    assert len(spans) == len(stored) < len(ext)
    assert (art / "model.onnx.data").stat().st_size < 1.01 * sum(length for _, length in spans)
    model = transformers_model(wide)
    ids = torch.tensor([[5, 9, 14, 3, 22]])
    assert greedy(art, ids.numpy(), 6) == torch_greedy(model, ids, 6)


def transformers_model(path):
    import transformers

    return transformers.Qwen2ForCausalLM.from_pretrained(path, local_files_only=True).eval()


def test_reference_outputs_read_blocks_and_rows(wide, tmp_path, monkeypatch):
    """With a block smaller than every large tensor, the LM head runs block by block, the embedding
    reads rows, the rest loads per module: the reference outputs equal those of the model in memory."""
    from phm.export.graphs import graph_specs
    from phm.export.refs import reference_feeds, run_torch

    monkeypatch.setattr(source_mod, "BLOCK_BYTES", 64 << 10)
    src = ModelSource.from_files(wide)
    src.model.set_attn_implementation("eager")
    spec = [s for s in graph_specs(src.model) if s.kind == "decoder"][0]
    with src.streaming() as model:
        held = dict(model.named_parameters())
        feeds = reference_feeds(spec, model)
        got = run_torch(spec, feeds)
        # each module dropped what it loaded: the model holds its placeholders again
        assert all(p is held[n] for n, p in model.named_parameters())
    whole = transformers_model(wide)
    whole.set_attn_implementation("eager")
    ref_spec = [s for s in graph_specs(whole) if s.kind == "decoder"][0]
    want = run_torch(ref_spec, reference_feeds(ref_spec, whole))
    for g, w in zip(got, want):
        for name in w:
            np.testing.assert_allclose(g[name], w[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_blocked_writes_equal_numpy(wide, tmp_path, monkeypatch, transpose, dtype):
    """A view written in blocks far smaller than the tensor: the bytes numpy would write."""
    monkeypatch.setattr(weights_mod, "BLOCK_BYTES", 10_000)
    index = SafetensorsIndex(wide)
    entry = index["lm_head.weight"]
    view = StreamedWeight(entry, dtype)
    view = view.transposed() if transpose else view
    data = DataFile(tmp_path / "w.data")
    data.add([view, StreamedWeight(index["model.norm.weight"])])
    raw = np.fromfile(tmp_path / "w.data", dtype=dtype, count=int(np.prod(view.shape)))
    want = entry.load().astype(dtype)
    np.testing.assert_array_equal(raw.reshape(view.shape), want.T if transpose else want)
    assert view.location == "w.data" and view.offset == 0


def test_views_fold_by_bookkeeping():
    a = StreamedWeight(weights_mod.ArrayTensor(np.arange(24, dtype=np.float32).reshape(4, 6)))
    t = a.transposed()
    assert t.shape == (6, 4) and np.array_equal(t.load(), np.arange(24).reshape(4, 6).T)
    back = t.transposed()
    assert back.ident == a.ident
    cores = a.reshaped((4, 2, 3))
    assert np.array_equal(cores.load(), np.arange(24).reshape(4, 2, 3))
    assert a.reshaped((2, 12)).transposed().transposed().reshaped((4, 6)).ident == a.ident


def test_phm_checkpoint_streams_its_cores(wide, tmp_path):
    from phm.trainer import PHMConfig, drop_dense, inject_phm, load, save_phm_checkpoint, set_lambda

    model = load(wide)
    config = PHMConfig(num_bases=2)
    targets = inject_phm(model, config)
    set_lambda(model, 1.0)
    drop_dense(model)
    ckpt = save_phm_checkpoint(model, config, targets, tmp_path / "phm", source_dir=wide)
    art = export_model(ckpt, ExportConfig(external_data_mb=0), tmp_path / "art")
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["graphs"]["decoder"]["phm_nodes"]["PHMFFN"] == 2
    ext = external_spans(art / "decoder.trt.onnx")
    cores = {n: ext[n] for n in ext if n.endswith(".cores")}
    assert len(cores) == 6 and len(set(cores.values())) == 6
    ids = torch.tensor([[5, 9, 14, 3, 22]])
    assert greedy(art, ids.numpy(), 4) == torch_greedy(load(ckpt), ids, 4)
    # --fp16: the same tensors at half the bytes, cast block by block on the way
    art16 = export_model(ckpt, ExportConfig(external_data_mb=0, fp16=True), tmp_path / "art16")
    half = external_spans(art16 / "decoder.trt.onnx")
    assert {n: length for n, (_, length) in half.items() if n in cores} == \
        {n: length // 2 for n, (_, length) in cores.items()}


def test_vlm_tied_table_is_stored_once_across_graphs(tmp_path):
    """A VLM whose LM head is its embedding table: the embed graph gathers from it, the decoder
    multiplies by its transpose; both graphs point at the same bytes of the one data file."""
    import transformers

    from tinymodels import save_char_tokenizer, tiny_config

    cfg = tiny_config("qwen2_5_vl")
    cfg.tie_word_embeddings = True
    model = transformers.Qwen2_5_VLForConditionalGeneration(cfg).eval()
    model.tie_weights()
    assert model.lm_head.weight is model.get_input_embeddings().weight
    model.save_pretrained(tmp_path / "vl")
    save_char_tokenizer(tmp_path / "vl")
    art = export_model(tmp_path / "vl", ExportConfig(external_data_mb=0), tmp_path / "art")
    embed, decoder = external_spans(art / "embed.onnx"), external_spans(art / "decoder.trt.onnx")
    (table,) = embed.values()  # the embed graph holds the table and nothing else
    assert table in decoder.values() and table[1] == 256 * 32 * 4
    spans = set(embed.values()) | set(decoder.values()) | set(external_spans(art / "vision.onnx").values())
    assert (art / "model.onnx.data").stat().st_size < 1.1 * sum(length for _, length in spans)
