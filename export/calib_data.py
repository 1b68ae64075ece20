"""Calibration data for INT8: text prompts and image+prompt pairs.

Accepted forms of `--calib-data PATH`:
- a JSONL file: one object per line with "text" and optionally "image" (path relative to the file);
- a TXT file: one prompt per non-empty line;
- a folder: every *.jsonl / *.txt in it as above, plus every image (png/jpg/jpeg/bmp) paired with a
  same-named .txt caption/prompt when one exists (otherwise an empty prompt).
Without a path, the default set shipped in phm/export/calib_default/ (48 varied English prompts)
is used. Empty or unreadable data is a ValueError with one clear line. The file formats are the
trainer's (phm.trainer.data.read_samples: one reader for both), except that an image without a
caption is kept as an image-only sample.
"""

from __future__ import annotations

from pathlib import Path

from phm.trainer.data import Sample, read_samples

__all__ = ["DEFAULT_CALIB_DIR", "CalibSample", "load_calibration_data"]

DEFAULT_CALIB_DIR = Path(__file__).resolve().parent / "calib_default"
CalibSample = Sample  # text, image (and an unused prompt): the trainer's sample type


def load_calibration_data(path: str | Path | None = None, limit: int | None = None) -> list[CalibSample]:
    """Samples from `path` (or the default set), in a stable order, at most `limit` of them."""
    samples = read_samples(DEFAULT_CALIB_DIR if path is None else path, captions_required=False,
                           what="calibration data")
    return samples[:limit] if limit else samples
