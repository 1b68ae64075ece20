"""Shared helper of the runtime tests: `phm-run --image … --json` on a saved photo."""

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from phm.runtime.cli import main as phm_run


def phm_run_image_json(art: Path, prompt: str, photo: np.ndarray, photo_path: Path, max_new_tokens: int) -> dict:
    """Save `photo` as PNG at `photo_path`, run phm-run on it (1 thread), assert exit 0, return the JSON."""
    Image.fromarray(photo).save(photo_path)
    result = CliRunner().invoke(phm_run, [str(art), "--prompt", prompt, "--image", str(photo_path),
                                          "--max-new-tokens", str(max_new_tokens), "--json", "--threads", "1"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)
