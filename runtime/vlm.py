"""How the runtime feeds images to the exported VLM graphs (numpy, no torch).

Qwen2-VL / Qwen2.5-VL:

    spec     = VisionSpec.from_artifacts(artifacts_dir)            # token ids, merge size, pixel range
    images   = spec.image_inputs(image_processor(hf_dir), image)   # pixel_values + image_grid_thw
    ids      = spec.image_prompt(text_ids, images["image_grid_thw"])  # vision_start, image tokens…, vision_end
    features = vision.onnx(**spec.vision_feeds(images))            # (image_tokens, hidden), any grid
    embeds   = embed.onnx(input_ids)                               # (1, seq, hidden)
    embeds   = merge_image_features(embeds, input_ids, features, image_token_id)
    pos, nxt = mrope_position_ids(input_ids, grid_thw, image_token_id, spatial_merge_size)
    decoder.onnx(inputs_embeds=embeds, position_ids=pos, …)        # prefill
    decode step k (k = 0, 1, …): position_ids = full((3, 1, 1), nxt + k)

Images keep their own size: the HF image processor (from the artifacts' hf/ dir) resizes each to
the nearest grid of whole merged patches within the manifest's [min_pixels, max_pixels] (its
`smart_resize`), and the prompt holds one image token per merged patch (grid t·h·w / merge²), as
the HF processor writes them. What the vision tower computes from the grid with Python loops
(rotary (h, w) positions, which patches attend to each other: one image frame in full-attention
blocks, one window in Qwen2.5-VL's window blocks) is computed here (`vision_feeds`, a numpy port
of transformers' vision_utils) and fed to the graph, which masks its attention by these segment
ids. Positions follow HF `get_rope_index` for images (tested against it).

LLaVA (LlavaForConditionalGeneration, e.g. a DINOv2 tower + Llama): the same three graphs, but
vision.onnx takes one (1, 3, S, S) image (S = manifest `image_size`; preprocess_square_image), the
prompt holds one image token per row of its output (no start/end tokens) and the decoder takes
ordinary (batch, seq) positions, cumsum(mask) - 1, as for a text LLM: no M-RoPE, no rope_delta.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import position_ids_from_mask, read_manifest

__all__ = ["VisionSpec", "attention_segments", "check_image_file", "image_processor", "load_image",
           "merge_image_features", "mrope_position_ids", "mrope_step_positions", "preprocess_image",
           "preprocess_square_image", "vision_feeds", "vision_position_ids"]

# The Qwen vision graph's inputs besides pixel_values (phm.export.io_names, the I/O contract)
VISION_POSITION_IDS, IMAGE_SEGMENTS, WINDOW_SEGMENTS = "vision_position_ids", "image_segments", "window_segments"


def check_image_file(path: str | Path) -> Path:
    """`path` as a Path, or ValueError in one line: a directory, or no such file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"image {path} is a directory, not an image file")
    if not path.is_file():
        raise ValueError(f"image {path} does not exist")
    return path


def load_image(path: str | Path):
    """The RGB image at `path` (Pillow), or ValueError in one line naming the cause: a directory, no
    such file, a file Pillow cannot decode (truncated, not an image, unsupported), a decompression bomb."""
    from PIL import Image

    path = check_image_file(path)
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Image.DecompressionBombError as e:
        raise ValueError(f"image {path} is too large to decode safely: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read image {path}: {str(e).splitlines()[0] or type(e).__name__}") \
            from None


@dataclass(frozen=True)
class VisionSpec:
    """What the runtime needs to build an image prompt for one VLM artifacts dir."""

    image_token_id: int
    vision_start_token_id: int | None = None  # Qwen only
    vision_end_token_id: int | None = None    # Qwen only
    spatial_merge_size: int = 1
    patch_size: int | None = None     # Qwen: pixels per patch side; None for LLaVA
    window_patches: int | None = None  # Qwen2.5-VL: window side in patches (window_size / patch); Qwen2-VL None
    min_pixels: int | None = None     # Qwen: the pixel range images are resized into (manifest.json)
    max_pixels: int | None = None
    image_size: int | None = None  # LLaVA: the square side in pixels vision.onnx was traced for
    features: int | None = None    # LLaVA: rows of vision.onnx's output = image tokens per image
    bos_token_id: int | None = None  # LLaVA: the image goes after a leading BOS

    @property
    def mrope(self) -> bool:
        """Qwen2(.5)-VL: (3, batch, seq) M-RoPE positions; LLaVA: plain (batch, seq) positions."""
        return self.patch_size is not None

    def image_tokens(self, grid_thw=None) -> int:
        """Image tokens of one image: Qwen, its grid (t, h, w) in patches / merge²; LLaVA, fixed."""
        if not self.mrope:
            return self.features
        if grid_thw is None:
            raise ValueError("a Qwen image prompt needs the image's grid (image_grid_thw)")
        t, h, w = (int(v) for v in np.asarray(grid_thw).reshape(-1)[:3])
        return t * h * w // self.spatial_merge_size ** 2

    def image_prompt(self, text_ids: list[int], grid_thw=None) -> list[int]:
        """The prompt ids with the image's tokens in place (`grid_thw`: the image's grid, Qwen only).

        An image token the text already holds (the placeholder a chat template puts inside the user
        turn: Qwen's `<|image_pad|>` between its vision start/end tokens, LLaVA's `<image>`) is
        expanded to one token per image feature, as the HF processors do. A text without one gets
        the image first: Qwen as `<|vision_start|>` image `<|vision_end|>` text, LLaVA after a
        leading BOS, which must stay first.
        """
        tokens = [self.image_token_id] * self.image_tokens(grid_thw)
        text_ids = list(text_ids)
        n = text_ids.count(self.image_token_id)
        if n > 1:
            raise ValueError(f"the prompt holds {n} image tokens; one image takes one")
        if n == 1:  # a chat template's placeholder (Qwen: inside <|vision_start|> … <|vision_end|>)
            i = text_ids.index(self.image_token_id)
            return text_ids[:i] + tokens + text_ids[i + 1:]
        if self.mrope:
            return [self.vision_start_token_id, *tokens, self.vision_end_token_id, *text_ids]
        head = 1 if self.bos_token_id is not None and text_ids[:1] == [self.bos_token_id] else 0
        return text_ids[:head] + tokens + text_ids[head:]

    def image_inputs(self, processor, image) -> dict:
        """One image (path, PIL image or HWC uint8 array) as the processor's outputs: pixel_values and,
        for Qwen, image_grid_thw (1, 3), at the image's own size within [min_pixels, max_pixels]."""
        if self.mrope:
            return preprocess_image(processor, image, self.min_pixels, self.max_pixels)
        return {"pixel_values": preprocess_square_image(processor, image, self.image_size)}

    def vision_feeds(self, images: dict) -> dict:
        """vision.onnx's feeds for `image_inputs`' output (pixel_values float32; the caller casts)."""
        feeds = {"pixel_values": np.asarray(images["pixel_values"], np.float32)}
        if self.mrope:
            feeds.update(vision_feeds(images["image_grid_thw"], self.spatial_merge_size, self.window_patches))
        return feeds

    @classmethod
    def from_artifacts(cls, artifacts: Path, manifest: dict | None = None) -> "VisionSpec | None":
        """None for a text-only artifacts dir (no vision graph in its manifest). `manifest`: the dir's
        manifest where the caller has read it already (read and checked here otherwise)."""
        vision = (manifest or read_manifest(artifacts))["graphs"].get("vision")
        if vision is None:
            return None
        return cls.from_config(json.loads((Path(artifacts) / "hf" / "config.json").read_text()), vision)

    @classmethod
    def from_config(cls, cfg: dict, vision: dict) -> "VisionSpec":
        """From the model's config.json (a dict) and the manifest's entry of its vision graph (the
        exporter also calls this before the manifest exists, for its INT8 report)."""
        if cfg.get("model_type") == "llava":
            return cls._llava(cfg, vision)
        if "min_pixels" not in vision:
            raise ValueError("manifest.json's vision graph takes one fixed image grid (an older export): "
                             "re-export the model")
        vcfg = cfg["vision_config"]
        window = vcfg.get("window_size") if cfg.get("model_type") == "qwen2_5_vl" else None
        return cls(int(cfg["image_token_id"]), int(cfg["vision_start_token_id"]), int(cfg["vision_end_token_id"]),
                   int(vcfg["spatial_merge_size"]), patch_size=int(vcfg["patch_size"]),
                   window_patches=None if window is None else int(window) // int(vcfg["patch_size"]),
                   min_pixels=int(vision["min_pixels"]), max_pixels=int(vision["max_pixels"]))

    @classmethod
    def _llava(cls, cfg: dict, vision: dict) -> "VisionSpec":
        # The image-token count is what the exporter's traced vision graph returned, not recomputed
        # from the tower's config: CLS / register tokens and the select strategy differ by tower.
        if "image_tokens" not in vision:
            raise ValueError("manifest.json does not record the vision graph's image_tokens: re-export the model")
        token = cfg.get("image_token_id", cfg.get("image_token_index"))
        if token is None:
            raise ValueError("hf/config.json holds no image_token_id / image_token_index")
        bos = cfg.get("text_config", {}).get("bos_token_id", cfg.get("bos_token_id"))
        return cls(int(token), image_size=int(vision["image_size"]), features=int(vision["image_tokens"]),
                   bos_token_id=None if bos is None else int(bos))


def image_processor(hf_dir: Path):
    """The HF image processor saved with the model in the artifacts' hf/: preprocessor_config.json, or
    (transformers 5 processors, e.g. LlavaProcessor) the "image_processor" entry of processor_config.json."""
    import json

    from transformers import AutoImageProcessor

    hf_dir = Path(hf_dir)
    nested = hf_dir / "processor_config.json"
    if not (hf_dir / "preprocessor_config.json").is_file() and not (
            nested.is_file() and "image_processor" in json.loads(nested.read_text(encoding="utf-8"))):
        raise ValueError(f"{hf_dir} holds no image processor (preprocessor_config.json or processor_config.json): "
                         "export a model dir that ships its image processor")
    try:
        return AutoImageProcessor.from_pretrained(hf_dir, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"cannot load the image processor in {hf_dir}: {str(e).splitlines()[0]}") from None


def _as_rgb(image):
    """An image (path, PIL image or HWC uint8 array) as an RGB PIL image; a path is read by
    `load_image` (its one-line errors)."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return image.convert("RGB")


def preprocess_image(processor, image, min_pixels: int | None = None, max_pixels: int | None = None) -> dict:
    """An image (path, PIL image or HWC uint8 array) → {"pixel_values": (patches, patch_dim) float32,
    "image_grid_thw": (1, 3) int64}: the Qwen processor's own resize (the nearest grid of whole merged
    patches, its pixel count within [min_pixels, max_pixels]; None: the processor's range),
    normalisation and patch layout."""
    size = dict(processor.size)
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    try:
        out = processor(images=[_as_rgb(image)], size=size, return_tensors="np")
    except ValueError as e:  # e.g. an aspect ratio over 200 (smart_resize refuses it)
        raise ValueError(f"the image processor refused the image: {str(e).splitlines()[0]}") from None
    grid = np.asarray(out["image_grid_thw"], np.int64).reshape(1, 3)
    return {"pixel_values": np.asarray(out["pixel_values"], dtype=np.float32), "image_grid_thw": grid}


def vision_position_ids(grid_thw, spatial_merge_size: int) -> np.ndarray:
    """(patches, 2) rotary (h, w) positions of each patch, in the processor's patch order (merge
    blocks first): transformers' get_vision_position_ids."""
    out = []
    m = spatial_merge_size
    for t, h, w in np.asarray(grid_thw, np.int64).reshape(-1, 3):
        hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        blocks = (h // m, m, w // m, m)
        pos = np.stack([hh.reshape(blocks).transpose(0, 2, 1, 3).reshape(-1),
                        ww.reshape(blocks).transpose(0, 2, 1, 3).reshape(-1)], axis=-1)
        out.append(np.tile(pos, (int(t), 1)))
    return np.concatenate(out).astype(np.int64)


def attention_segments(grid_thw, spatial_merge_size: int, window_patches: int | None = None) -> np.ndarray:
    """(patches,) int64 segment id per patch, in the processor's patch order: patches attend to the
    patches of their own segment. Without `window_patches`: one segment per image frame (the vision
    towers' cu_seqlens); with it: one per window of window_patches² patches (Qwen2.5-VL's window
    blocks: transformers' get_vision_window_index, whose windows are cut over the merged-token grid,
    edge windows smaller)."""
    out, base = [], 0
    m = spatial_merge_size
    for t, h, w in np.asarray(grid_thw, np.int64).reshape(-1, 3):
        t, rows, cols = int(t), int(h) // m, int(w) // m   # the merged-token grid
        if window_patches is None:
            seg = np.repeat(np.arange(t), rows * cols * m * m)
            count = t
        else:
            side = window_patches // m                      # window side in merged tokens
            across = -(-cols // side)
            i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
            win = (i // side) * across + (j // side)        # window of each merged token, row-major
            per_frame = -(-rows // side) * across
            seg = (np.arange(t)[:, None] * per_frame + win.reshape(1, -1)).reshape(-1)
            seg = np.repeat(seg, m * m)                     # the merge block's patches are consecutive
            count = t * per_frame
        out.append(seg + base)
        base += count
    return np.concatenate(out).astype(np.int64)


def vision_feeds(grid_thw, spatial_merge_size: int, window_patches: int | None = None) -> dict:
    """The Qwen vision graph's grid-derived inputs: rotary positions, frame segments and (Qwen2.5-VL)
    window segments."""
    feeds = {VISION_POSITION_IDS: vision_position_ids(grid_thw, spatial_merge_size),
             IMAGE_SEGMENTS: attention_segments(grid_thw, spatial_merge_size)}
    if window_patches is not None:
        feeds[WINDOW_SEGMENTS] = attention_segments(grid_thw, spatial_merge_size, window_patches)
    return feeds


def preprocess_square_image(processor, image, size: int) -> np.ndarray:
    """An image → pixel_values (1, 3, size, size) float32 for a LLaVA vision graph traced at `size`:
    resized (bicubic) straight to size × size, then the processor's rescale and normalisation.
    Its own resize / center crop are left off: they would give another size than the graph's
    (DINOv2's processor resizes to 256 and crops to 224 whatever the tower was trained at)."""
    from PIL import Image

    skip = {k: False for k in ("do_resize", "do_center_crop") if hasattr(processor, k)}
    square = _as_rgb(image).resize((size, size), Image.Resampling.BICUBIC)
    out = processor(images=[square], return_tensors="np", **skip)
    pixels = np.asarray(out["pixel_values"], dtype=np.float32)
    if pixels.shape[0] != 1 or pixels.shape[-2:] != (size, size):
        raise ValueError(f"the image processor gave pixel_values {pixels.shape}, the vision graph takes "
                         f"(1, 3, {size}, {size})")
    return pixels


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


def mrope_step_positions(input_ids: np.ndarray, mask: np.ndarray, rope_delta: np.ndarray | None,
                         grid_thw: tuple | None = None, image_token_id: int | None = None,
                         spatial_merge_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(3, batch, seq) M-RoPE positions of one step of a Qwen2(.5)-VL sequence, and the rope delta
    to carry to the next step (both backends use this, so torch and the graphs see the same positions).

    A prefill with an image (`grid_thw` given; unpadded rows) lays the image out by
    `mrope_position_ids` and the delta becomes (last position + 1 − prompt length) per row, as HF's
    rope_deltas; any other step gives all three rows the text positions cumsum(mask) − 1 shifted by
    the delta (none yet: a text-only sequence, no shift)."""
    if grid_thw is not None:
        pos, _ = mrope_position_ids(input_ids, np.array([grid_thw]), image_token_id, spatial_merge_size)
        return pos, pos.max(axis=(0, 2)) + 1 - input_ids.shape[1]
    if rope_delta is None:
        rope_delta = np.zeros(input_ids.shape[0], np.int64)
    pos = position_ids_from_mask(mask, input_ids.shape[1]) + rope_delta[:, None]
    return np.ascontiguousarray(np.broadcast_to(pos, (3, *pos.shape))), rope_delta
