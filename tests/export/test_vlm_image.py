"""VLM with an image: vision.onnx → merged into embed.onnx output → decoder.onnx, greedy == torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ortloop import eos_ids, greedy, manifest, session

from phm.export import io_names as io
from phm.runtime.vlm import merge_image_features, mrope_position_ids
from phm.trainer import load


def _prompt(model, grid):
    cfg = model.config
    n_img = int(np.prod(grid)) // cfg.vision_config.spatial_merge_size ** 2
    return torch.tensor([[5, 6, cfg.vision_start_token_id] + [cfg.image_token_id] * n_img
                         + [cfg.vision_end_token_id, 7, 8, 9]])


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_image_prompt_greedy_equals_torch(store, arch):
    art = store.artifacts(arch, True)
    model = load(store.checkpoint(arch, True))
    cfg = model.config
    grid = np.array(manifest(art)["graphs"]["vision"]["grid_thw"])
    ids = _prompt(model, grid)
    pixels = load_pixels(art)

    mm = (ids == cfg.image_token_id).int()
    pos_hf, _ = model.model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=torch.from_numpy(grid))
    pos, nxt = mrope_position_ids(ids.numpy(), grid, cfg.image_token_id, cfg.vision_config.spatial_merge_size)
    np.testing.assert_array_equal(pos, pos_hf.numpy())

    expected = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm,
                              pixel_values=torch.from_numpy(pixels), image_grid_thw=torch.from_numpy(grid),
                              max_new_tokens=16, min_new_tokens=16, do_sample=False)[0, ids.shape[1]:].tolist()

    features = session(art / "vision.onnx").run(None, {io.PIXEL_VALUES: pixels})[0]
    embed = session(art / "embed.onnx")
    prompt_len = ids.shape[1]

    def embeds_fn(cur):
        e = embed.run(None, {io.INPUT_IDS: cur})[0]
        return merge_image_features(e, cur, features, cfg.image_token_id) if cur.shape[1] == prompt_len else e

    def positions_fn(start, length):
        return pos if start == 0 else np.full((3, 1, length), nxt + start - prompt_len, np.int64)

    got = greedy(art, ids.numpy(), 16, embeds_fn, positions_fn, suppress=eos_ids(model))
    assert got == expected
    # the image really steers the output: the first step's logits move with the pixels
    dec = session(art / "decoder.onnx")
    feed = {io.ATTENTION_MASK: np.ones((1, prompt_len), np.int64), io.POSITION_IDS: pos}
    feed.update({i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
                 for i in dec.get_inputs() if i.name.startswith("past_")})
    logits = [dec.run([io.LOGITS], {**feed, io.INPUTS_EMBEDS: merge_image_features(
        embed.run(None, {io.INPUT_IDS: ids.numpy()})[0], ids.numpy(), f, cfg.image_token_id)})[0] for f in
        (features, session(art / "vision.onnx").run(None, {io.PIXEL_VALUES: -pixels})[0])]
    assert np.abs(logits[0] - logits[1]).max() > 1e-3


def load_pixels(art):
    from polygraphy.json import load_json

    return np.asarray(load_json(str(art / "vision.inputs.json"))[0][io.PIXEL_VALUES], np.float32)
