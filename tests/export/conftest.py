"""Fixtures: tiny checkpoints (dense HF dir and PHM checkpoint) per architecture, exported once per session."""

from __future__ import annotations

import pytest
import torch

from phm.export import ExportConfig, export_model
from phm.trainer import PHMConfig, drop_dense, inject_phm, save_phm_checkpoint, set_lambda
from phm.trainer.tiny_models import save_tiny_model, tiny_model

ARCHS = ("llama", "qwen2", "gpt2", "bert", "qwen2_vl", "qwen2_5_vl")
VLMS = ("qwen2_vl", "qwen2_5_vl")


def make_phm_checkpoint(arch: str, out, towers=("language", "vision"), **cfg) -> object:
    """Tiny `arch` with every MLP linear of `towers` replaced by PHM (B=2 projection start)."""
    model = tiny_model(arch)
    towers = tuple(t for t in towers if t == "language" or arch in VLMS)
    config = PHMConfig(towers=towers, **cfg)
    targets = inject_phm(model, config)
    set_lambda(model, 1.0)
    drop_dense(model)
    with torch.no_grad():  # move the cores off the projection so PHM ≠ a rounded dense model
        for name, p in model.named_parameters():
            if name.endswith(".cores"):
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    return save_phm_checkpoint(model, config, targets, out)


class _Store:
    def __init__(self, factory):
        self.factory, self.cache = factory, {}

    def checkpoint(self, arch: str, phm: bool):
        key = ("ckpt", arch, phm)
        if key not in self.cache:
            base = self.factory.mktemp(f"{arch}-{'phm' if phm else 'dense'}")
            self.cache[key] = (make_phm_checkpoint(arch, base / "model") if phm
                               else save_tiny_model(arch, base / "model"))
        return self.cache[key]

    def artifacts(self, arch: str, phm: bool, **cfg):
        key = ("art", arch, phm, tuple(sorted(cfg.items())))
        if key not in self.cache:
            ckpt = self.checkpoint(arch, phm)
            out = self.factory.mktemp(f"{arch}-{'phm' if phm else 'dense'}-art")
            self.cache[key] = export_model(ckpt, ExportConfig(overwrite=True, **cfg), out)
        return self.cache[key]


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    return _Store(tmp_path_factory)


import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from ortloop import ...`
