"""The image sizes a Qwen2(.5)-VL export serves: the pixel range images are resized into (the
model's image processor's, or --min-pixels/--max-pixels) and the patch counts it gives, which the
vision engine's TensorRT optimisation profile covers (manifest.json records both)."""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["DEFAULT_PIXELS", "patch_range", "pixel_range"]

# transformers' Qwen2VLImageProcessor defaults (56² and 28² · 1280 pixels): what the HF processor
# uses when the model dir's processor config names no range
DEFAULT_PIXELS = (56 * 56, 28 * 28 * 1280)


def _processor_range(model_dir: Path) -> tuple[int | None, int | None]:
    """(min, max) pixels of the image processor config the model dir ships, where it names them."""
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        path = Path(model_dir) / name
        if not path.is_file():
            continue
        doc = json.loads(path.read_text(encoding="utf-8"))
        doc = doc.get(key, {}) if key else doc
        size = doc.get("size") or {}
        low = doc.get("min_pixels", size.get("shortest_edge"))
        high = doc.get("max_pixels", size.get("longest_edge"))
        if low is not None or high is not None:
            return low, high
    return None, None


def pixel_range(model_dir: Path, min_pixels: int | None, max_pixels: int | None) -> tuple[int, int]:
    """(min, max) pixels: the given bounds, else the model dir's image processor's, else HF's defaults.
    ValueError in one line where they cross."""
    low, high = _processor_range(model_dir)
    low = int(min_pixels if min_pixels is not None else low if low is not None else DEFAULT_PIXELS[0])
    high = int(max_pixels if max_pixels is not None else high if high is not None else DEFAULT_PIXELS[1])
    if low > high:
        raise ValueError(f"min_pixels {low} exceeds max_pixels {high} (the image processor's range and the "
                         "options together)")
    return low, high


def patch_range(min_pixels: int, max_pixels: int, patch: int, merge: int) -> tuple[int, int, int]:
    """(min, opt, max) patches of the images the processor's smart_resize makes within the pixel range:
    each side a whole number of merged patches (patch · merge pixels), the area within the range; opt
    is the square image at the range's geometric mean (448² pixels for Qwen's defaults: 1024 patches)."""
    unit = merge * merge

    def patches(pixels: float, rounding) -> int:
        return max(unit, int(rounding(pixels / (patch * patch) / unit)) * unit)

    low, high = patches(min_pixels, math.ceil), patches(max_pixels, math.floor)
    if high < low:
        raise ValueError(f"no image of whole {patch * merge}-pixel merged patches lies between {min_pixels} and "
                         f"{max_pixels} pixels: widen --min-pixels/--max-pixels")
    side = round(math.sqrt(min_pixels * max_pixels) ** 0.5 / (patch * merge))
    opt = min(max(side * side * unit, low), high)
    return low, opt, high
