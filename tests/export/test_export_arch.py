"""Per architecture, dense and PHM: torch vs ONNX Runtime on the exported graphs, greedy decode, MLP counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from exportkit import ARCHS, VLMS
from ortloop import eos_ids, greedy, manifest, session, torch_greedy

from phm.export import io_names as io
from phm.export.graphs import DecoderGraph, EncoderGraph, cache_geometry
from phm.trainer import load

CASES = [(arch, phm) for arch in ARCHS for phm in (False, True)]
EXPECTED_MLPS = {"llama": (2, 0), "qwen2": (2, 0), "gpt2": (2, 0), "bert": (2, 0), "qwen2_vl": (2, 2),
                 "qwen2_5_vl": (2, 2)}  # (language, vision) MLP blocks of the tiny configs


def _ids(batch, seq, seed):
    return torch.randint(3, 240, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch,phm", CASES, ids=[f"{a}-{'phm' if p else 'dense'}" for a, p in CASES])
def test_torch_vs_ort_fp32(store, arch, phm):
    """Max abs diff ≤ 1e-4 on logits (and the KV cache) at shapes other than the trace's:
    prefill (past 0), decode (seq 1) and left padding."""
    art = store.artifacts(arch, phm)
    model = load(store.checkpoint(arch, phm))
    if arch == "bert":
        sess = session(art / "encoder.onnx")
        ids = _ids(3, 9, 0)
        mask = torch.ones_like(ids)
        mask[2, 6:] = 0
        with torch.no_grad():
            ref = EncoderGraph(model).eval()(ids, mask)
        got = sess.run(None, {io.INPUT_IDS: ids.numpy(), io.ATTENTION_MASK: mask.numpy()})[0]
        assert np.abs(got - ref.numpy()).max() <= 1e-4
        return
    vlm = arch in VLMS
    wrapper = DecoderGraph(model, embeds=vlm).eval()
    sess = session(art / "decoder.onnx")
    layers, heads, dim = cache_geometry(model)
    gen = torch.Generator().manual_seed(3)
    for batch, seq, past in ((1, 7, 0), (2, 1, 5), (3, 4, 3)):
        ids = _ids(batch, seq, batch)
        first = model.get_input_embeddings()(ids).detach() if vlm else ids
        mask = torch.ones(batch, past + seq, dtype=torch.int64)
        if batch > 1:
            mask[1, :2] = 0  # left padding
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
        if vlm:
            pos = pos.unsqueeze(0).expand(3, batch, seq).contiguous()
        kv = [torch.randn(batch, heads, past, dim, generator=gen) for _ in range(2 * layers)]
        args = (first, mask, pos, *kv)
        with torch.no_grad():
            ref = wrapper(*args)
        names = [i.name for i in sess.get_inputs()]
        got = sess.run(None, dict(zip(names, [a.numpy() for a in args])))
        assert got[0].shape == tuple(ref[0].shape)
        for g, r in zip(got, ref):
            assert np.abs(g - r.numpy()).max() <= 1e-4, (batch, seq, past)


@pytest.mark.parametrize("arch,phm", [c for c in CASES if c[0] != "bert"],
                         ids=[f"{a}-{'phm' if p else 'dense'}" for a, p in CASES if a != "bert"])
def test_greedy_16_tokens_equals_torch(store, arch, phm):
    art = store.artifacts(arch, phm)
    model = load(store.checkpoint(arch, phm))
    ids = _ids(1, 5, 11)
    expected = torch_greedy(model, ids, 16)
    if arch in VLMS:
        embed = session(art / "embed.onnx")

        def embeds_fn(cur):
            return embed.run(None, {io.INPUT_IDS: cur})[0]

        def positions_fn(start, length):
            return np.broadcast_to(np.arange(start, start + length, dtype=np.int64), (3, 1, length)).copy()

        got = greedy(art, ids.numpy(), 16, embeds_fn, positions_fn, suppress=eos_ids(model))
    else:
        got = greedy(art, ids.numpy(), 16, suppress=eos_ids(model))
    assert got == expected


@pytest.mark.parametrize("arch,phm", CASES, ids=[f"{a}-{'phm' if p else 'dense'}" for a, p in CASES])
def test_every_mlp_is_a_phm_node(store, arch, phm):
    """PHM checkpoints: every MLP block of the configured towers became PHM node(s); dense: none."""
    m = manifest(store.artifacts(arch, phm))
    language, vision = EXPECTED_MLPS[arch]
    assert m["mlps_total"] == language + vision
    phm_nodes = sum(sum(g["phm_nodes"].values()) for g in m["graphs"].values())
    if phm:
        assert m["mlps_rewritten"] == language + vision
        assert all(s["status"] in ("PHMFFN", "PHMLinear") for s in m["mlps"])
        # fused wherever the activation is in the spec (Qwen2-VL's vision quick_gelu is not)
        fused = [s for s in m["mlps"] if s["status"] == "PHMFFN"]
        assert len(fused) == language + (0 if arch == "qwen2_vl" else vision)
        assert phm_nodes == len(fused) + 2 * (language + vision - len(fused))
    else:
        assert m["mlps_rewritten"] == 0 and phm_nodes == 0
        assert all(s["status"] == "dense" for s in m["mlps"])
