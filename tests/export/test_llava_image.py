"""LLaVA (DINOv2 tower, as samples/vlm builds it) with an image: vision.onnx (tower + projector) →
scattered into embed.onnx's output at the image-token positions → decoder.onnx (1-D positions, no
M-RoPE); greedy == torch generate, dense and PHM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ortloop import eos_ids, greedy, manifest, session, torch_greedy

from phm.export import io_names as io
from phm.runtime.vlm import merge_image_features
from phm.trainer import load

ARCH = "llava_dinov2"


def _image_tokens(model) -> int:
    vcfg = model.config.vision_config
    return (vcfg.image_size // vcfg.patch_size) ** 2  # CLS dropped ("default" strategy)


def _prompt(model) -> torch.Tensor:
    return torch.tensor([[5, 6] + [model.config.image_token_id] * _image_tokens(model) + [7, 8, 9]])


def _pixels(model, seed=0) -> np.ndarray:
    vcfg = model.config.vision_config
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, vcfg.num_channels, vcfg.image_size, vcfg.image_size, generator=gen).numpy()


@pytest.mark.parametrize("phm", [False, True], ids=["dense", "phm"])
def test_llava_image_greedy_equals_torch(store, phm):
    art = store.artifacts(ARCH, phm)
    model = load(store.checkpoint(ARCH, phm))
    cfg = model.config
    m = manifest(art)
    assert set(m["graphs"]) == {"vision", "embed", "decoder"}
    assert m["graphs"]["vision"]["image_size"] == cfg.vision_config.image_size
    assert m["graphs"]["vision"]["image_tokens"] == _image_tokens(model)  # the runtime's prompt layout
    if phm:
        assert sum(m["graphs"]["decoder"]["phm_nodes"].values()) > 0
    ids, pixels = _prompt(model), _pixels(model)

    features = session(art / "vision.onnx").run(None, {io.PIXEL_VALUES: pixels})[0]
    with torch.no_grad():
        ref = model.model.get_image_features(torch.from_numpy(pixels), vision_feature_layer=cfg.vision_feature_layer,
                                             vision_feature_select_strategy=cfg.vision_feature_select_strategy)
    ref = torch.cat(list(ref.pooler_output)).numpy()
    assert features.shape == (_image_tokens(model), cfg.text_config.hidden_size)
    assert np.abs(features - ref).max() <= 1e-4

    expected = torch_greedy(model, ids, 16, pixel_values=torch.from_numpy(pixels))
    embed = session(art / "embed.onnx")
    prompt_len = ids.shape[1]

    def embeds_fn(cur):
        e = embed.run(None, {io.INPUT_IDS: cur})[0]
        return merge_image_features(e, cur, features, cfg.image_token_id) if cur.shape[1] == prompt_len else e

    got = greedy(art, ids.numpy(), 16, embeds_fn, suppress=eos_ids(model))  # 1-D positions: the default
    assert got == expected

    # the image really steers the output: another image gives other first-step logits
    dec = session(art / "decoder.onnx")
    feed = {io.ATTENTION_MASK: np.ones((1, prompt_len), np.int64),
            io.POSITION_IDS: np.arange(prompt_len, dtype=np.int64)[None]}
    feed.update({i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
                 for i in dec.get_inputs() if i.name.startswith("past_")})
    other = session(art / "vision.onnx").run(None, {io.PIXEL_VALUES: _pixels(model, seed=1)})[0]
    base = embed.run(None, {io.INPUT_IDS: ids.numpy()})[0]
    logits = [dec.run([io.LOGITS], {**feed, io.INPUTS_EMBEDS: merge_image_features(base, ids.numpy(), f,
                                                                                    cfg.image_token_id)})[0]
              for f in (features, other)]
    assert np.abs(logits[0] - logits[1]).max() > 1e-3


def test_llava_decoder_takes_plain_positions(store):
    m = manifest(store.artifacts(ARCH, False))
    pos = next(i for i in m["graphs"]["decoder"]["io"]["inputs"] if i["name"] == io.POSITION_IDS)
    assert pos["shape"] == [io.BATCH, io.SEQUENCE]
