"""Read the shared golden vectors: `golden_cases()` yields one dict of tensors + metadata per case."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

GOLDEN_DIR = Path(__file__).resolve().parent


def golden_cases() -> list[dict]:
    """Each case: metadata from cases.json (int4_group too) plus tensors x, bases, cores (B, m, k), y,
    bias|None, and the INT4 set: int4_cores (m, B, k/2) int8, int4_scales (m, B, k/int4_group), y_int4."""
    index = json.loads((GOLDEN_DIR / "cases.json").read_text())
    tensors = load_file(str(GOLDEN_DIR / "phm_golden.safetensors"))
    out = []
    for meta in index["cases"]:
        name = meta["name"]
        case = dict(meta)
        for key in ("x", "bases", "cores", "y", "int4_cores", "int4_scales", "y_int4"):
            case[key] = tensors[f"{name}.{key}"]
        case["bias_tensor"] = tensors.get(f"{name}.bias")
        out.append(case)
    return out
