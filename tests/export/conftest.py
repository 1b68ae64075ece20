"""Fixtures: tiny checkpoints (dense HF dir and PHM checkpoint) per architecture, exported once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from phm.export import ExportConfig, export_model
from tinymodels import save_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from ortloop / exportkit import ...`
from exportkit import make_phm_checkpoint  # noqa: E402


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

