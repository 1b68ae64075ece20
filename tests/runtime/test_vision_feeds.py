"""vlm.vision_feeds (numpy) against transformers' vision_utils, the torch code it ports: rotary
positions equal, and the attention segments partition the patches exactly as HF's cu_seqlens
(frames) and window index + cu_window_seqlens (Qwen2.5-VL windows) do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

from phm.runtime.vlm import attention_segments, vision_feeds, vision_position_ids

GRIDS = [[[1, 8, 12]], [[1, 14, 4]], [[2, 4, 6]], [[1, 2, 2]], [[1, 16, 24]], [[1, 8, 12], [2, 6, 4]]]


def _same(segments: np.ndarray) -> np.ndarray:
    return segments[:, None] == segments[None, :]


def _hf_window_segments(grid, merge: int, window: int, patch: int) -> np.ndarray:
    """Per-patch window ids in the processor's order, from HF's window permutation and boundaries."""
    index, cu = get_vision_window_index(torch.tensor(grid), merge, window, patch)
    unit = merge * merge
    order = (index[:, None] * unit + torch.arange(unit)).reshape(-1).numpy()  # window order → patch
    in_window_order = np.searchsorted(cu.numpy()[1:], np.arange(len(order)), side="right")
    out = np.empty(len(order), np.int64)
    out[order] = in_window_order
    return out


def _hf_frame_segments(grid) -> np.ndarray:
    cu = get_vision_cu_seqlens(torch.tensor(grid)).numpy()
    return np.searchsorted(cu[1:], np.arange(cu[-1]), side="right")


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("merge,window,patch", [(2, 112, 14), (2, 16, 4)])
def test_feeds_equal_transformers(grid, merge, window, patch):
    np.testing.assert_array_equal(vision_position_ids(grid, merge),
                                  get_vision_position_ids(torch.tensor(grid), merge).numpy())
    assert (_same(attention_segments(grid, merge)) == _same(_hf_frame_segments(grid))).all()
    ours = attention_segments(grid, merge, window // patch)
    assert (_same(ours) == _same(_hf_window_segments(grid, merge, window, patch))).all()
    feeds = vision_feeds(grid, merge, window // patch)
    assert set(feeds) == {"vision_position_ids", "image_segments", "window_segments"}
    assert all(v.dtype == np.int64 and len(v) == sum(t * h * w for t, h, w in grid) for v in feeds.values())


def test_windows_are_not_frames():
    """On a grid of several windows the two segmentations differ (the window blocks are tested)."""
    grid = [[1, 16, 24]]
    assert len(np.unique(attention_segments(grid, 2, 8))) == 6 and len(np.unique(attention_segments(grid, 2))) == 1
    assert "window_segments" not in vision_feeds(grid, 2)  # Qwen2-VL: full attention only
