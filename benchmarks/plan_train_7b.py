"""Training memory plans of Qwen2.5-VL-7B (its real config, no weights) with the paper's recipe:
the tables of docs/trainer.md § Scale.

    python benchmarks/plan_train_7b.py        # prints the markdown table; --json for the numbers

The config is Qwen2.5-VL-7B-Instruct's (text decoder 3584 × 18944, 28 layers; 32-layer vision tower),
written to a temp dir with a placeholder weights file: `plan_training` builds the model on the meta
device and never reads a weight. Settings: PHM on the language MLPs, top 12 layers B = 3 and the rest
B = 2 (the paper's), LoRA r = 8 on q/k/v, a text batch of 1,024 tokens per sequence; each row names
its dtype, checkpointing, init, world size and batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GiB = 1024 ** 3

QWEN25_VL_7B = dict(
    text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                     rope_scaling={"rope_type": "default", "type": "mrope", "mrope_section": [16, 24, 24]},
                     tie_word_embeddings=False),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31]),
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    tie_word_embeddings=False)

# (label, DistillConfig fields, world size, device GiB)
ROWS = [
    ("fp32 base, calibrated init, 1 GPU", dict(batch_size=1), 1, 80),
    ("fp32 base, projection init, 1 GPU", dict(batch_size=1, calibrate_init=False), 1, 80),
    ("bf16 base + checkpointing, projection init, 1 GPU", dict(batch_size=1, calibrate_init=False,
                                                                base_dtype="bfloat16", gradient_checkpointing=True),
     1, 80),
    ("bf16 base + checkpointing, projection init, 1 GPU, batch 4", dict(batch_size=4, calibrate_init=False,
                                                                         base_dtype="bfloat16",
                                                                         gradient_checkpointing=True), 1, 80),
    ("bf16 base + checkpointing, FSDP2 over 4 GPUs, global batch 16", dict(batch_size=16, calibrate_init=False,
                                                                             base_dtype="bfloat16",
                                                                             gradient_checkpointing=True,
                                                                             parallel="fsdp"), 4, 80),
    ("bf16 base, no checkpointing, FSDP2 over 4 GPUs, global batch 4", dict(batch_size=4, calibrate_init=False,
                                                                              base_dtype="bfloat16",
                                                                              parallel="fsdp"), 4, 80),
]


def model_dir(root: Path) -> Path:
    import numpy as np
    import transformers
    from safetensors.numpy import save_file

    cfg = transformers.Qwen2_5_VLConfig(**QWEN25_VL_7B, architectures=["Qwen2_5_VLForConditionalGeneration"])
    out = root / "qwen2.5-vl-7b"
    cfg.save_pretrained(out)
    save_file({"placeholder": np.zeros(1, np.float32)}, str(out / "model.safetensors"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from phm.trainer import PHMConfig
    from phm.trainer.distill import DistillConfig
    from phm.trainer.plan import plan_training

    phm = PHMConfig(num_bases=2, top_k_b3=12, init="projection")
    results = []
    with tempfile.TemporaryDirectory(prefix="phm-plan7b-") as tmp:
        where = model_dir(Path(tmp))
        for label, fields, world, gib in ROWS:
            plan = plan_training(where, phm, DistillConfig(max_length=args.max_length, **fields), gib, world_size=world)
            results.append({"setting": label, "world_size": world, "device_gib": gib, "verdict": plan.verdict,
                            "batch_per_device": plan.batch, "params": plan.params,
                            "gib": {k: round(v / GiB, 2) for k, v in {**plan.items, **plan.stages}.items()},
                            "peak_gib": round(plan.peak / GiB, 1)})
    print(f"| setting (Qwen2.5-VL-7B, paper PHM recipe, {args.max_length} tokens) | per-device batch | "
          "weights (KD step) | trainable + grads + AdamW | activations (+ recompute) | init stage | KD step | "
          "peak / 80 GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        g = r["gib"]
        shard = r["world_size"] if "FSDP" in r["setting"] else 1  # the KD step holds 1/N of these per device
        g = {**g, "weights": g["weights"] / shard, "trainable": g["trainable"] / shard}
        opt = g["trainable"] + g["gradients"] + g["AdamW"] + g["DDP buckets"]
        act = f"{g['activations']:.1f}" + (f" (+{g['recompute']:.1f})" if g["recompute"] else "")
        init = max(g["calibrated init"], g["local stage"])
        print(f"| {r['setting']} | {r['batch_per_device'][0]} | {g['weights']:.1f} | {opt:.1f} | {act} | "
              f"{init:.1f} | {g['KD step']:.1f} | {r['peak_gib']:.1f} GiB: {r['verdict']} |")
    print(f"trainable parameters: {results[0]['params']['trainable'] / 1e9:.2f} B of "
          f"{results[0]['params']['total'] / 1e9:.2f} B", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
