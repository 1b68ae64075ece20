"""Qwen2.5-VL training at the user's scale on one GPU: the memory plan, then N steps of the paper's
recipe, the measured peak against the plan and the step time. What scripts/train_gpu_check.sh runs.

    python benchmarks/train_gpu_check.py --shape 7b --steps 50 --json out.json      # one H100 / A100 80 GB
    python benchmarks/train_gpu_check.py --shape tiny --device cpu --steps 2         # the script itself, on a CPU

The model is Qwen2.5-VL's real architecture (transformers' Qwen2_5_VLForConditionalGeneration) at the
7B or 3B shape (benchmarks/plan_train_7b.py's config; 3B: Qwen2.5-VL-3B's), its weights generated on
the device (normal(0, 0.02), norms 1: no hub, no disk), in the recipe's base dtype. Settings: the
paper recipe (recipes/paper-qwen2.5-vl-7b.yaml) with --steps/--batch-size/--max-length overriding
it; data: image+text batches (one generated image of --image-size² pixels and random words per
sample, through Qwen2.5-VL's image processor settings), so the vision tower and its PHM layers run.
Measured: torch.cuda.max_memory_allocated over the training (the plan counts tensors, as the
allocator does) and the median step time after the first 5 steps. The plan is for a text batch
of the same token count (the vision tower's activations come on top).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from plan_train_7b import QWEN25_VL_7B  # noqa: E402 - one definition of the 7B config

GiB = 1024 ** 3
QWEN25_VL_3B = dict(
    QWEN25_VL_7B,
    text_config=dict(QWEN25_VL_7B["text_config"], vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                     num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True),
    vision_config=dict(QWEN25_VL_7B["vision_config"], out_hidden_size=2048), tie_word_embeddings=True)
TINY = dict(
    text_config=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False,
                     rope_scaling={"rope_type": "default", "type": "mrope", "mrope_section": [2, 3, 3]}),
    vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1]),
    image_token_id=511, video_token_id=510, vision_start_token_id=509, vision_end_token_id=508,
    tie_word_embeddings=False)
SHAPES = {"7b": QWEN25_VL_7B, "3b": QWEN25_VL_3B, "tiny": TINY}


class ImageTextBatches:
    """Generated image + random-word samples for Qwen2.5-VL (the trainer's `batch(step)` contract)."""

    def __init__(self, config, batch_size: int, length: int, image_size: int):
        from transformers import Qwen2VLImageProcessorPil

        v = config.vision_config
        self.config, self.batch_size, self.length = config, batch_size, length
        self.processor = Qwen2VLImageProcessorPil(patch_size=v.patch_size, merge_size=v.spatial_merge_size,
                                                  temporal_patch_size=v.temporal_patch_size,
                                                  min_pixels=image_size ** 2, max_pixels=image_size ** 2)
        self.image_size = image_size

    def __len__(self) -> int:
        return 1000

    def batch(self, step: int) -> dict:
        gen = torch.Generator().manual_seed(step)
        images = [(torch.rand(self.image_size, self.image_size, 3, generator=gen) * 255).to(torch.uint8).numpy()
                  for _ in range(self.batch_size)]
        enc = self.processor(images=images, return_tensors="pt")
        c, merge = self.config, self.config.vision_config.spatial_merge_size ** 2
        rows = []
        for grid in enc["image_grid_thw"]:
            image = [c.vision_start_token_id] + [c.image_token_id] * (int(grid.prod()) // merge) + [c.vision_end_token_id]
            words = torch.randint(10, min(c.get_text_config().vocab_size, 150000), (self.length - len(image),),
                                  generator=gen).tolist()
            rows.append(image + words)
        ids = torch.tensor(rows)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": enc["pixel_values"],
                "image_grid_thw": enc["image_grid_thw"]}


def _config_dir(root: Path, shape: str) -> Path:
    import numpy as np
    import transformers
    from safetensors.numpy import save_file

    cfg = transformers.Qwen2_5_VLConfig(**SHAPES[shape], architectures=["Qwen2_5_VLForConditionalGeneration"])
    out = root / f"qwen2.5-vl-{shape}"
    cfg.save_pretrained(out)
    save_file({"placeholder": np.zeros(1, np.float32)}, str(out / "model.safetensors"))  # the plan reads no weight
    return out


@torch.no_grad()
def _generated_model(model_dir: Path, device: str, dtype: torch.dtype):
    """The architecture from its config with generated weights, built directly on the device."""
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = transformers.Qwen2_5_VLForConditionalGeneration(cfg)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or ".norm" in name and name.endswith("weight") and p.dim() == 1:
            p.fill_(1.0)
        elif p.dim() == 1:
            p.zero_()
        else:
            p.normal_(0.0, 0.02, generator=gen)
    for module in model.modules():  # rotary tables: buffers computed at construction, lost by to_empty
        if hasattr(module, "inv_freq") and hasattr(module, "rope_init_fn"):
            inv_freq, _ = module.rope_init_fn(module.config, device)
            module.inv_freq.copy_(inv_freq)
    return model.to(dtype).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=SHAPES, default="7b")
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "paper-qwen2.5-vl-7b.yaml")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--image-size", type=int, default=224, help="pixels per side of each generated image")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from phm.trainer import inject_phm
    from phm.trainer.distill import BASE_DTYPES, distill
    from phm.trainer.plan import plan_training
    from phm.trainer.recipe import load_recipe, settings

    values = {**load_recipe(args.recipe), "steps": args.steps, "batch_size": args.batch_size,
              "max_length": args.max_length, "device": args.device, "checkpoint_every": 0, "log_every": 1,
              "warmup_steps": min(5, args.steps)}
    run = settings(values)
    cuda = torch.device(args.device).type == "cuda"
    with tempfile.TemporaryDirectory(prefix="phm-gpu-check-") as tmp:
        model_dir = _config_dir(Path(tmp), args.shape)
        t0 = time.perf_counter()
        plan = plan_training(model_dir, run.phm, run.distill)
        plan_s = time.perf_counter() - t0
        print(plan.table(), flush=True)
        t0 = time.perf_counter()
        model = _generated_model(model_dir, args.device, BASE_DTYPES[run.distill.base_dtype])
        targets = inject_phm(model, run.phm)
        setup_s = time.perf_counter() - t0
        data = ImageTextBatches(model.config, args.batch_size, args.max_length, args.image_size)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        _, history = distill(model, data, run.distill)
        train_s = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if cuda else None
    stamps = [h["elapsed_s"] for h in history if "elapsed_s" in h]
    steps = [b - a for a, b in zip(stamps, stamps[1:])][4:] or [stamps[-1]]
    result = {"device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
              "shape": args.shape, "recipe": args.recipe.name, "steps": args.steps,
              "batch": [args.batch_size, args.max_length], "image_size": args.image_size,
              "phm_layers": len(targets), "trainable_params": plan.params["trainable"],
              "plan_peak_gib": round(plan.peak / GiB, 2), "plan_peak_bytes": plan.peak,
              "plan_items_gib": {k: round(v / GiB, 2) for k, v in plan.items.items()},
              "measured_peak_gib": None if peak is None else round(peak / GiB, 2), "measured_peak_bytes": peak,
              "measured_over_plan": None if peak is None else round(peak / plan.peak, 3),
              "median_step_s": round(statistics.median(steps), 3), "train_s": round(train_s, 1),
              "setup_s": round(setup_s, 1), "plan_s": round(plan_s, 1),
              "first_loss": history[0].get("loss"), "last_loss": history[-1].get("loss"),
              "torch": torch.__version__}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
