"""Budget mode on SmolLM2-135M-Instruct: B per block from measured sensitivity against uniform B at
the same size, both right after the calibrated init (no training), on held-out top-1 agreement.

    python benchmarks/bench_budget.py --threads 2          # docs/trainer.md § Budget mode

Data as in bench_trainer_fidelity.py (chatterbot utterances in SmolLM2's chat template, split by
hash; the first 96 held-out texts of ≥ 3 words evaluated). Calibration: the first 8 training
batches of 8 texts (the smollm2-cpu recipe's). For each uniform B (1, 2, 3) the budget is that
model's exact size; budget mode's choice (one sensitivity measurement serves every target) is
calibrated and evaluated the same way; plus --targets fractions of the parameters on their own.
Results: a table and --json (benchmarks/results/budget_smollm2_cpu.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_trainer_fidelity import SETTINGS, _texts  # noqa: E402 - the same data and held-out split


def _size(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--targets", default="0.6,0.7,0.8", help="extra budgets (fractions of the parameters)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "budget_smollm2_cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from phm.common.fsutil import atomic_write_text
    from phm.trainer import PHMConfig, calibrate_phm, inject_phm, set_lambda
    from phm.trainer.budget import choose, sensitivity
    from phm.trainer.data import TokenBatches
    from phm.trainer.evaluate import compare, reference_outputs
    from phm.trainer.inject import restore_dense

    s = SETTINGS["smollm2"]
    model, tokenizer = s["load"]()
    train, held, _ = _texts("smollm2", tokenizer, False)
    data = TokenBatches.from_texts(tokenizer, train, 8, s["max_length"], seed=0, group_by_length=True)
    calib = [data.batch(i) for i in range(8)]
    eval_batches = list(TokenBatches.from_texts(tokenizer, held, 32, s["max_length"]).all_batches())
    reference = reference_outputs(model, eval_batches, "logits")
    original = _size(model)
    t0 = time.perf_counter()
    measured = sensitivity(model, PHMConfig(), calib)
    sensitivity_s = time.perf_counter() - t0

    def evaluate(phm: PHMConfig) -> dict:
        inject_phm(model, phm)
        calibrate_phm(model, calib)
        set_lambda(model, 1.0)
        result = compare(model, reference, eval_batches, "logits")
        size = sum(p.numel() for n, p in model.named_parameters() if ".base_layer." not in n)
        restore_dense(model)
        return {"params": size, "fraction": size / original, **result}

    rows = []
    uniform = {b: evaluate(PHMConfig(num_bases=b)) for b in (1, 2, 3)}
    targets = [(f"uniform B = {b}'s size", r["params"], uniform[b]) for b, r in uniform.items()]
    targets += [(f"{float(f):.0%} of the parameters", int(float(f) * original), None)
                for f in args.targets.split(",") if f.strip()]
    for label, target, same_size in targets:
        choice = choose(measured, original, target)
        got = evaluate(choice.phm_config(PHMConfig()))
        counts = {b: sum(1 for v in choice.num_bases.values() if v == b) for b in range(1, 5)}
        rows.append({"budget": label, "target_params": target, "budget_params": got["params"],
                     "off_target_pct": round(100 * (got["params"] - target) / target, 3),
                     "blocks_per_B": counts, "budget_top1": round(got["top1_agreement"], 4),
                     "budget_ppl_ratio": round(got["ppl_ratio"], 3),
                     "uniform_top1": None if same_size is None else round(same_size["top1_agreement"], 4),
                     "uniform_ppl_ratio": None if same_size is None else round(same_size["ppl_ratio"], 3)})
    print("| budget | parameters (target → chosen) | off target | blocks at B = 1/2/3/4 | top-1 budget | "
          "top-1 uniform | ppl ratio budget / uniform |")
    print("|---|---|---:|---|---:|---:|---|")
    for r in rows:
        uni = "—" if r["uniform_top1"] is None else f"{100 * r['uniform_top1']:.1f} %"
        ppl = f"{r['budget_ppl_ratio']}" + ("" if r["uniform_ppl_ratio"] is None else f" / {r['uniform_ppl_ratio']}")
        print(f"| {r['budget']} | {r['target_params'] / 1e6:.2f} M → {r['budget_params'] / 1e6:.2f} M | "
              f"{r['off_target_pct']:+.2f} % | {'/'.join(str(r['blocks_per_B'][b]) for b in range(1, 5))} | "
              f"{100 * r['budget_top1']:.1f} % | {uni} | {ppl} |")
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads",
              "command": " ".join(["python", *sys.argv]), "model": "SmolLM2-135M-Instruct",
              "original_params": original, "heldout_texts": len(held), "sensitivity_s": round(sensitivity_s, 1),
              "rows": rows}
    atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
