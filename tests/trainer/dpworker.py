"""Run under `torchrun` (or alone) by test_parallel.py: the real phm-train CLI, or the distill verb on
a tiny Qwen2.5-VL with image batches, as one of N data-parallel processes.

    dpworker.py cli STOP_AT PHM_TRAIN_ARGS…   phm-train; with STOP_AT > 0 every process stops right
                                              after step STOP_AT (its state saved): an interrupted run
    dpworker.py vlm OUT_JSON PARALLEL         20 steps of distill on image+text batches; rank 0 writes
                                              the logged losses and the trained tensors' sums
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _Stop(SystemExit):
    pass


def _cli(stop_at: int, argv: list[str]) -> None:
    from phm.trainer.cli import main

    if os.environ.get("DPWORKER_RANKS"):  # which processes the launcher started: a file per rank
        Path(os.environ["DPWORKER_RANKS"], f"rank{os.environ.get('RANK')}-of-{os.environ.get('WORLD_SIZE')}").touch()

    distill_module = sys.modules["phm.trainer.distill"]  # (the package's `distill` attribute is the verb)
    record = distill_module._record

    def record_then_stop(run, done, *args):
        record(run, done, *args)
        if done == stop_at:
            raise _Stop(3)

    if stop_at:
        distill_module._record = record_then_stop
    main(argv, standalone_mode=True)


class ImageBatches:
    """Qwen2.5-VL batches of one random image (of varying size) and a few words per sample, built with
    the model's image processor: the `batch(step)` contract of the trainer's data."""

    def __init__(self, config, batch_size: int = 4, count: int = 12, seed: int = 0):
        from transformers import Qwen2VLImageProcessorPil

        v = config.vision_config
        self.config, self.batch_size = config, batch_size
        self.processor = Qwen2VLImageProcessorPil(patch_size=v.patch_size, merge_size=v.spatial_merge_size,
                                                  temporal_patch_size=v.temporal_patch_size, min_pixels=8 * 8,
                                                  max_pixels=32 * 32)
        rng = np.random.default_rng(seed)
        self.images = [rng.integers(0, 255, (16 + 8 * (i % 3), 16 + 8 * (i % 2), 3), dtype=np.uint8)
                       for i in range(count)]
        self.words = [rng.integers(5, 200, 2 + i % 4).tolist() for i in range(count)]

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    def batch(self, step: int) -> dict:
        epoch, pos = divmod(step, len(self))
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(epoch))
        idx = order[pos * self.batch_size:(pos + 1) * self.batch_size].tolist()
        enc = self.processor(images=[self.images[i] for i in idx], return_tensors="pt")
        merge = self.config.vision_config.spatial_merge_size ** 2
        c = self.config
        rows = [[c.vision_start_token_id] + [c.image_token_id] * (int(g.prod()) // merge) + [c.vision_end_token_id]
                + self.words[i] for g, i in zip(enc["image_grid_thw"], idx)]
        length = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), length), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, r in enumerate(rows):
            ids[row, :len(r)], mask[row, :len(r)] = torch.tensor(r), 1
        return {"input_ids": ids, "attention_mask": mask, "pixel_values": enc["pixel_values"],
                "image_grid_thw": enc["image_grid_thw"]}


def _vlm(out_json: str, parallel: str) -> None:
    from tinymodels import tiny_model

    from phm.trainer import PHMConfig, inject_phm
    from phm.trainer.distill import DistillConfig, distill
    from phm.trainer.parallel import world_from_env

    model = tiny_model("qwen2_5_vl")
    inject_phm(model, PHMConfig(towers=("language", "vision"), init="projection"))
    data = ImageBatches(model.config)
    config = DistillConfig(steps=20, batch_size=4, progress=False, log_every=1, calibrate_init=False,
                           warmup_steps=2, recon_weight=0.5, parallel=parallel)
    world = world_from_env()
    model, history = distill(model, data, config, world=world)
    if world.main:
        sums = {name: float(p.double().sum()) for name, p in model.state_dict().items()}
        Path(out_json).write_text(json.dumps({"losses": [h["loss"] for h in history], "sums": sums}))


if __name__ == "__main__":
    if sys.argv[1] == "cli":
        _cli(int(sys.argv[2]), sys.argv[3:])
    else:
        _vlm(sys.argv[2], sys.argv[3])
