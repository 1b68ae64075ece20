"""Calibration data for INT8: text prompts and image+prompt pairs.

Accepted forms of `--calib-data PATH`:
- a JSONL file: one object per line with "text" and optionally "image" (path relative to the file);
- a TXT file: one prompt per non-empty line;
- a folder: every *.jsonl / *.txt in it as above, plus every image (png/jpg/jpeg/bmp) paired with a
  same-named .txt caption/prompt when one exists (otherwise an empty prompt).
Without a path, the default set shipped in phm/export/calib_default/ (48 varied English prompts)
is used. Empty or unreadable data is a ValueError with one clear line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_CALIB_DIR", "CalibSample", "load_calibration_data"]

DEFAULT_CALIB_DIR = Path(__file__).resolve().parent / "calib_default"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class CalibSample:
    text: str
    image: Path | None = None


def _from_jsonl(path: Path) -> list[CalibSample]:
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{lineno}: not valid JSON") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise ValueError(f"{path}:{lineno}: each line needs a \"text\" string")
        image = obj.get("image")
        if image is not None:
            image = (path.parent / image).resolve()
            if not image.is_file():
                raise ValueError(f"{path}:{lineno}: image {image} does not exist")
        out.append(CalibSample(obj["text"], image))
    return out


def _from_txt(path: Path) -> list[CalibSample]:
    return [CalibSample(line.strip()) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _from_dir(folder: Path) -> list[CalibSample]:
    out = []
    images = {p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    for p in sorted(folder.iterdir()):
        if p.suffix == ".jsonl":
            out += _from_jsonl(p)
        elif p.suffix == ".txt" and p.stem not in images:  # a caption file belongs to its image
            out += _from_txt(p)
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            caption = p.with_suffix(".txt")
            out.append(CalibSample(caption.read_text(encoding="utf-8").strip() if caption.is_file() else "", p))
    return out


def load_calibration_data(path: str | Path | None = None, limit: int | None = None) -> list[CalibSample]:
    """Samples from `path` (or the default set), in a stable order, at most `limit` of them."""
    path = DEFAULT_CALIB_DIR if path is None else Path(path)
    if not path.exists():
        raise ValueError(f"calibration data {path} does not exist")
    if path.is_dir():
        samples = _from_dir(path)
    elif path.suffix == ".jsonl":
        samples = _from_jsonl(path)
    elif path.suffix == ".txt":
        samples = _from_txt(path)
    else:
        raise ValueError(f"calibration data {path}: expected a folder, a .jsonl or a .txt file")
    if not samples:
        raise ValueError(f"calibration data {path} is empty")
    return samples[:limit] if limit else samples
