"""How a runtime feeds images to the exported Qwen2-VL / Qwen2.5-VL graphs (numpy, no torch).

    features = vision.onnx(pixel_values)                     # (image_tokens, hidden), fixed grid
    embeds   = embed.onnx(input_ids)                         # (1, seq, hidden)
    embeds   = merge_image_features(embeds, input_ids, features, image_token_id)
    pos, nxt = mrope_position_ids(input_ids, grid_thw, image_token_id, spatial_merge_size)
    decoder.onnx(inputs_embeds=embeds, position_ids=pos, …)  # prefill
    decode step k (k = 0, 1, …): position_ids = full((3, 1, 1), nxt + k)

The prompt holds one image token per merged patch (grid t·h·w / merge²) per image, as the HF
processor writes them; positions follow HF `get_rope_index` for images (tested against it).
"""

from __future__ import annotations

import numpy as np

__all__ = ["merge_image_features", "mrope_position_ids"]


def merge_image_features(embeds: np.ndarray, input_ids: np.ndarray, features: np.ndarray,
                         image_token_id: int) -> np.ndarray:
    """Replace the embeddings at image-token positions by the vision features, in order.

    embeds (batch, seq, hidden); input_ids (batch, seq); features (image_tokens, hidden).
    """
    mask = input_ids == image_token_id
    if int(mask.sum()) != features.shape[0]:
        raise ValueError(f"prompt has {int(mask.sum())} image tokens, the vision graph gave {features.shape[0]} features")
    out = embeds.copy()
    out[mask] = features.astype(out.dtype)
    return out


def mrope_position_ids(input_ids: np.ndarray, grid_thw: np.ndarray, image_token_id: int,
                       spatial_merge_size: int) -> tuple[np.ndarray, int]:
    """(3, batch, seq) M-RoPE positions of a prompt (no padding) and the next text position.

    Text tokens advance all three rows together; each run of image tokens gets (t, h, w) grid
    coordinates offset by the position where it starts, and the text after it continues from
    start + max(h, w) / merge. grid_thw: (images, 3) in patches, as given to the vision tower.
    """
    batch, seq = input_ids.shape
    pos = np.zeros((3, batch, seq), np.int64)
    nxt = 0
    for b in range(batch):
        images = iter(np.asarray(grid_thw).reshape(-1, 3))
        cur, i, rows = 0, 0, []
        while i < seq:
            j = i
            is_image = input_ids[b, i] == image_token_id
            while j < seq and (input_ids[b, j] == image_token_id) == is_image:
                j += 1
            if not is_image:
                rows.append(np.broadcast_to(np.arange(cur, cur + j - i), (3, j - i)))
                cur += j - i
            else:
                t, h, w = (int(v) for v in next(images))
                h, w = h // spatial_merge_size, w // spatial_merge_size
                tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
                grid = np.stack([tt, hh, ww]).reshape(3, -1) + cur
                if grid.shape[1] != j - i:
                    raise ValueError(f"image run of {j - i} tokens does not match grid {t}×{h}×{w}")
                rows.append(grid)
                cur += max(h, w)
            i = j
        pos[:, b] = np.concatenate(rows, axis=1)
        nxt = max(nxt, int(pos[:, b].max()) + 1)
    return pos, nxt
