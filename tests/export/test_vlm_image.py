"""VLM with an image: vision.onnx → merged into embed.onnx output → decoder.onnx, greedy == torch,
at image grids other than the trace's (the vision graph takes any grid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ortloop import eos_ids, greedy, manifest, session

from phm.export import io_names as io
from phm.runtime.vlm import merge_image_features, mrope_position_ids, vision_feeds
from phm.trainer import load


def _prompt(model, grid):
    cfg = model.config
    n_img = int(np.prod(grid)) // cfg.vision_config.spatial_merge_size ** 2
    return torch.tensor([[5, 6, cfg.vision_start_token_id] + [cfg.image_token_id] * n_img
                         + [cfg.vision_end_token_id, 7, 8, 9]])


def _vision_feeds(model, grid, pixels):
    from phm.export.graphs import window_patches

    vcfg = model.config.vision_config
    return {io.PIXEL_VALUES: pixels, **vision_feeds(grid, vcfg.spatial_merge_size, window_patches(model))}


def _pixels(model, grid, seed=0):
    vcfg = model.config.vision_config
    dim = vcfg.in_channels * vcfg.temporal_patch_size * vcfg.patch_size ** 2
    return np.random.default_rng(seed).standard_normal((int(np.prod(grid)), dim)).astype(np.float32)


@pytest.mark.parametrize("arch,grid", [("qwen2_vl", (1, 6, 10)), ("qwen2_5_vl", (1, 10, 6)),
                                       ("qwen2_5_vl", (1, 4, 4))])
def test_image_prompt_greedy_equals_torch(store, arch, grid):
    art = store.artifacts(arch, True)
    model = load(store.checkpoint(arch, True))
    cfg = model.config
    grid = np.array([grid])
    ids = _prompt(model, grid)
    pixels = _pixels(model, grid)

    mm = (ids == cfg.image_token_id).int()
    pos_hf, _ = model.model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=torch.from_numpy(grid))
    pos, nxt = mrope_position_ids(ids.numpy(), grid, cfg.image_token_id, cfg.vision_config.spatial_merge_size)
    np.testing.assert_array_equal(pos, pos_hf.numpy())

    expected = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm,
                              pixel_values=torch.from_numpy(pixels), image_grid_thw=torch.from_numpy(grid),
                              max_new_tokens=16, min_new_tokens=16, do_sample=False)[0, ids.shape[1]:].tolist()

    vision = session(art / "vision.onnx")
    features = vision.run(None, _vision_feeds(model, grid, pixels))[0]
    with torch.no_grad():  # the tower as transformers runs it (window order, per-segment attention)
        out = model.model.visual(torch.from_numpy(pixels), grid_thw=torch.from_numpy(grid))
    np.testing.assert_allclose(features, getattr(out, "pooler_output", out).numpy(), atol=1e-5, rtol=1e-4)
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
        (features, vision.run(None, _vision_feeds(model, grid, -pixels))[0])]
    assert np.abs(logits[0] - logits[1]).max() > 1e-3


def test_vision_profile_covers_the_pixel_range(store):
    """The manifest records the image processor's pixel range and the engine profile's patch counts;
    the graph's inputs are dynamic in patches."""
    m = manifest(store.artifacts("qwen2_5_vl", True))
    vision = m["graphs"]["vision"]
    assert "grid_thw" not in vision and (vision["min_pixels"], vision["max_pixels"]) == (56 * 56, 28 * 28 * 1280)
    patches = [vision["profile"][k][io.PIXEL_VALUES][0] for k in ("min", "opt", "max")]
    # patch 4, merge 2: 56²/4² patches; a 240² image (the range's geometric mean, 237², in whole 8-pixel
    # merged patches); 28²·1280/4²
    assert patches == [196, 3600, 62720]
    for name in (io.VISION_POSITION_IDS, io.IMAGE_SEGMENTS, io.WINDOW_SEGMENTS):
        assert vision["profile"]["max"][name][0] == patches[2]
    shapes = {i["name"]: i["shape"] for i in vision["io"]["inputs"]}
    assert shapes[io.PIXEL_VALUES][0] == io.PATCHES and shapes[io.WINDOW_SEGMENTS] == [io.PATCHES]


@pytest.mark.parametrize("arch,full", [("qwen2_5_vl", None), ("qwen2_5_vl", []), ("qwen2_5_vl", [0, 1]),
                                       ("qwen2_vl", None)])
def test_vision_graph_equals_the_hf_tower(arch, full):
    """The traced wrapper (masked attention in the processor's order) equals transformers' tower
    (window reordering, per-segment attention) whichever blocks are full-attention ones."""
    from phm.export.graphs import VisionGraph, qwen_vision_sample
    from tinymodels import tiny_model

    model = tiny_model(arch).eval()
    if full is not None:
        model.model.visual.fullatt_block_indexes = full
    for grid in ([1, 8, 12], [1, 14, 4], [2, 4, 4]):
        grid = torch.tensor([grid])
        sample = qwen_vision_sample(model, grid, torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours = VisionGraph(model)(*sample)
            ref = model.model.visual(sample[0], grid_thw=grid)
        torch.testing.assert_close(ours, getattr(ref, "pooler_output", ref), atol=1e-6, rtol=1e-5)
