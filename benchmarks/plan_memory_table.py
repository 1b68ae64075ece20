"""The memory table of docs/jetson.md: `phm-export --target`'s plan for real model configs.

    python benchmarks/plan_memory_table.py [--context 4096]

Estimates, not measurements (export/memory_plan.py states its assumptions). Models are built from
their real configs on the meta device (no weights are read or downloaded); "PHM B=2" replaces every
MLP projection by n = 2, B = 2 cores (B/n² = half the MLP parameters), as phm-train's default.
"""

from __future__ import annotations

import argparse

import torch
import transformers

from phm.export.memory_plan import GiB, ModelFootprint, plan_memory

MODELS = {
    "SmolLM2-135M": transformers.LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True),
    # the language model of Qwen2.5-VL-7B (its ~0.7 B-parameter vision tower comes on top)
    "Qwen2.5-VL-7B LM": transformers.Qwen2Config(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, max_position_embeddings=32768, tie_word_embeddings=False),
}
TARGETS = ("orin-nano", "orin-nx", "agx-orin")


def footprint(config, phm_bases: int | None = None, n: int = 2) -> ModelFootprint:
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    fp = ModelFootprint.from_model(model)
    if phm_bases is None:
        return fp
    mlp = config.num_hidden_layers * 3 * config.hidden_size * config.intermediate_size  # gate, up, down
    return ModelFootprint(fp.linear_params - mlp, mlp * phm_bases // n ** 2, fp.embedding_params, fp.other_params,
                          fp.num_layers, fp.kv_heads, fp.head_dim, fp.hidden_size, fp.intermediate_size,
                          fp.vocab_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=4096)
    args = parser.parse_args()
    plans = {t: plan_memory(footprint(MODELS["SmolLM2-135M"]), "fp16", t, context=args.context) for t in TARGETS}
    header = " | ".join(f"{p.device.name} ({p.usable / GiB:.1f} usable)" for p in plans.values())
    print(f"| model | MLPs | precision | weights | {header} |")
    print("|---|---|---|---:|" + "---|" * len(TARGETS))
    for name, config in MODELS.items():
        for label, bases in (("dense", None), ("PHM B=2", 2)):
            fp = footprint(config, bases)
            for precision in ("fp16", "int8", "int4"):
                cells = []
                for t in TARGETS:
                    p = plan_memory(fp, precision, t, context=args.context)
                    cells.append(f"{p.total / GiB:.2f} GiB ({p.fraction:.0%})"
                                 + (": **refused**" if p.verdict == "does-not-fit" else
                                    ": warns" if p.verdict == "near-limit" else ""))
                print(f"| {name} | {label} | {precision} | {fp.weight_bytes(precision) / GiB:.2f} GiB | "
                      + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
