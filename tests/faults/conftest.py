"""Inputs of the fault suite, built once per session (tiny real-architecture models)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from faultkit import ...`


@dataclass
class Inputs:
    """Read-only inputs the cases copy or point at."""

    root: Path
    llama: Path      # dense tiny Llama HF dir + character tokenizer
    phm: Path        # PHM checkpoint of it (B=2), same tokenizer
    data: Path       # 40-line TXT corpus
    artifacts: Path  # phm-export of `phm` (text decoder, tokenizer in hf/)
    run: Path        # a finished 2-step phm-train run (train_state/ for --resume cases)


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> Inputs:
    from phm.export import ExportConfig, export_model
    from phm.trainer import DistillConfig, PHMConfig, drop_dense, inject_phm, save_phm_checkpoint, set_lambda, train
    from tinymodels import save_char_tokenizer, save_tiny_model, tiny_model

    root = tmp_path_factory.mktemp("fault-inputs")
    llama = save_char_tokenizer(save_tiny_model("llama", root / "llama"))
    model, config = tiny_model("llama"), PHMConfig()
    targets = inject_phm(model, config)
    set_lambda(model, 1.0)
    drop_dense(model)
    phm = save_phm_checkpoint(model, config, targets, root / "phm", source_dir=llama)
    data = root / "data.txt"
    data.write_text("".join(f"sample sentence number {i} about PHM layers\n" for i in range(40)))
    artifacts = export_model(phm, ExportConfig(), root / "artifacts")
    run = train(llama, root / "run", PHMConfig(), DistillConfig(steps=2, batch_size=2, max_length=16, progress=False,
                                                                 calibrate_init=False, checkpoint_every=1),
                data=str(data))
    return Inputs(root, llama, phm, data, artifacts, run)


