"""INT4 stability, dense vs PHM, on the real SmolLM2-135M-Instruct (CPU): does the hypercomplex
student lose less to 4-bit weights than the dense model it came from, and which rounding does best?

    python benchmarks/bench_int4.py --student DIR [--tokens 2048] [--docs docs/int4.md]
    (without --student it trains the B=2 student of benchmarks/bench_int8.py's recipe first, ~35 min)

1. dense: the bundled SmolLM2-135M-Instruct; PHM: its B=2 student (calibrated init, local stage, KD);
2. each exported with `phm-export --int4` by every method (rtn, awq, gptq; group 128), and with weight-only
   INT8 everywhere (`--int8 --int8-weights-only`, row "int8-wo") as the 8-bit reference; each export
   writes its report (FP32 PyTorch vs the quantized graph in ONNX Runtime, on the held-out split of
   the chatterbot corpus, which neither calibration nor training saw): top-1 agreement with the
   model's own FP32 and the KL divergence from it, with standard errors, and perplexity;
3. the sizes: the PHM student's --int4 --fp16 export against its fp32 export;
   with --minilm (default) all-MiniLM-L6-v2 and its B=2 student the same way (sentence-embedding
   cosine to their own FP32; bench_int8_encoder.py's student recipe);
4. one table (printed; JSON in benchmarks/results/int4_smollm2_cpu.json; docs/int4.md with --docs) and a plot.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import click

from phm.export import ExportConfig, Int4Config, Int8Config, export_model
from phm.export.report import ReportRow, write_report
from phm.trainer.models import smollm2_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_int8 import _phm_checkpoint, _replace_section, _rows, _run_fields, _setup, _student_config  # noqa: E402 - its student recipe

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # label → export config (report rows of the quantized graph carry the precision label)
    "int4-rtn": lambda tokens: ExportConfig(int4=Int4Config(method="rtn", report_tokens=tokens)),
    "int4-awq": lambda tokens: ExportConfig(int4=Int4Config(method="awq", report_tokens=tokens)),
    "int4-gptq": lambda tokens: ExportConfig(int4=Int4Config(method="gptq", report_tokens=tokens)),
    # group 32 everywhere: the PHM student's cores get 32 anyway (k = 288), so this is dense at PHM's granularity
    "int4-awq-g32": lambda tokens: ExportConfig(int4=Int4Config(method="awq", group=32, report_tokens=tokens)),
    "int8-wo": lambda tokens: ExportConfig(int8=Int8Config(activations=False, report_tokens=tokens)),
}


def _export(model_dir: Path, config: ExportConfig, art: Path, walls: dict, key: str) -> None:
    """export_model (its wall time into walls[key]), or nothing where `art` holds an export of the same
    model dir with the same config (a rerun adding the MiniLM part keeps the SmolLM2 exports): then
    walls[key] keeps the time the results JSON recorded for it (`walls` starts from it), else "reused"."""
    done = art / "export_config.json"
    if done.is_file() and done.read_text() == config.to_json() and \
            json.loads((art / "manifest.json").read_text()).get("model_dir") == str(model_dir):
        walls.setdefault(key, "reused")
        return
    t = time.time()
    export_model(model_dir, config, art)
    walls[key] = round(time.time() - t, 1)


def _measure(models: dict, tokens: int, work: Path, console, walls: dict, tag: str = "") -> tuple[dict, list]:
    """Every model exported with every VARIANT: ({model: {"fp32" | variant: its report row}}, the
    quantized rows labelled by variant); export wall times into `walls`."""
    res, rows = {}, []
    for name, model_dir in models.items():
        res[name] = {}
        for variant, config in VARIANTS.items():
            art = work / f"{tag}{name.lower()}-{variant}"
            console.print(f"exporting {tag}{name} {variant} → {art}")
            _export(model_dir, replace(config(tokens), overwrite=True), art, walls, f"{tag}{name} {variant}")
            got = _rows(art)
            fp32 = next(r for r in got if r.precision == "fp32" and r.model != "teacher (dense)")
            res[name].setdefault("fp32", fp32)
            res[name][variant] = got[-1]
            rows.append(ReportRow(fp32.model, variant, got[-1].metrics, got[-1].size_bytes))
            shutil.copy2(art / "report.md", work / f"report-{tag}{name.lower()}-{variant}.md")
    return res, rows


def _encoder_table(res: dict) -> str:
    cols = [(m, v) for m in res for v in VARIANTS]
    return "\n".join(["| metric | " + " | ".join(f"{m} {v}" for m, v in cols) + " |", "|---|" + "---:|" * len(cols),
                      "| sentence-embedding cosine to own FP32 | "
                      + " | ".join(f"{res[m][v].metrics.embedding_cosine:.5f}" for m, v in cols) + " |",
                      "| token hidden-state cosine | "
                      + " | ".join(f"{res[m][v].metrics.logit_cosine:.5f}" for m, v in cols) + " |"])


def _table(res: dict) -> str:
    """Metric rows × (model, variant) columns, ± one standard error where the metric has one."""
    cols = [(m, v) for m in res for v in VARIANTS]
    lines = ["| metric | " + " | ".join(f"{m} {v}" for m, v in cols) + " |", "|---|" + "---:|" * len(cols)]

    def cell(r: ReportRow, key: str) -> str:
        m = r.metrics
        if key == "top1":
            return f"{100 * m.top1_agreement:.2f} ± {100 * m.top1_se:.2f} %"
        if key == "kl":
            return f"{m.kl:.4f} ± {m.kl_se:.4f}"
        if key == "ppl":
            return f"{m.perplexity:.2f}"
        return f"{r.size_bytes / 1e6:.1f}"

    for label, key in (("top-1 agreement with own FP32", "top1"), ("KL(FP32 ‖ quantized), nats/token", "kl"),
                       ("perplexity (held-out)", "ppl"), ("graph files (MB)", "size")):
        lines.append(f"| {label} | " + " | ".join(cell(res[m][v], key) for m, v in cols) + " |")
    fp32 = " / ".join(f"{m} {res[m]['fp32'].metrics.perplexity:.2f}" for m in res)
    return "\n".join(lines) + f"\n\nFP32 perplexity: {fp32}."


@click.command()
@click.option("--work", type=click.Path(path_type=Path), default=Path("/tmp/phm-bench-int4"), show_default=True)
@click.option("--student", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
              help="the PHM checkpoint to compare (default: train bench_int8.py's student into --work)")
@click.option("--tokens", default=2048, show_default=True, type=click.IntRange(16), help="held-out tokens")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1))
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              default=ROOT / "benchmarks" / "results" / "int4_smollm2_cpu.json", show_default=True)
@click.option("--minilm/--no-minilm", default=True, show_default=True,
              help="also all-MiniLM-L6-v2 and its B=2 student (bench_int8_encoder.py's recipe, trained into --work)")
@click.option("--docs", "docs_path", type=click.Path(path_type=Path), default=None,
              help="also write the '## Measured' section of this markdown file (docs/int4.md)")
def main(work, student, tokens, threads, json_path, minilm, docs_path):
    console = _setup(work, threads, logging.WARNING)
    t0 = time.time()
    dense = smollm2_dir()
    phm = student or _phm_checkpoint(dense, work, _student_config(40, 8, 0, "abrupt"), console)
    # the recorded wall times of a previous run, for the exports this one reuses
    walls = dict(json.loads(json_path.read_text()).get("wall_s", {})) if json_path.is_file() else {}
    if not student:
        walls["student"] = round(time.time() - t0, 1)
    res, rows = _measure({"dense": dense, "PHM": phm}, tokens, work, console, walls)
    if student:
        walls.setdefault("student", "given")
    sizes = {}
    for tag, config in (("fp32", ExportConfig(overwrite=True)),
                        ("int4-fp16", ExportConfig(fp16=True, int4=Int4Config(), overwrite=True))):
        art = work / f"phm-size-{tag}"
        console.print(f"exporting PHM {tag} for its size → {art}")
        _export(phm, config, art, walls, f"PHM size {tag}")
        sizes[tag] = json.loads((art / "manifest.json").read_text())["onnx_bytes"]
    encoder = None
    if minilm:
        from bench_int8_encoder import _student as minilm_student

        from phm.trainer.models import minilm_dir

        t = time.time()
        student_e = minilm_student(work, 60, 3, console)
        walls.setdefault("minilm student", round(time.time() - t, 1))  # a reused student keeps its recorded time
        res_e, _ = _measure({"dense": minilm_dir(), "PHM": student_e}, tokens, work, console, walls, "minilm-")
        encoder = {"table": _encoder_table(res_e), "student": "bench_int8_encoder.py's recipe (B=2, calibrated init "
                                                             "+ 3 local epochs + 60 abrupt KD steps)",
                   "rows": [{"model": m, "precision": v, **res_e[m][v].metrics.__dict__} for m in res_e
                            for v in ("fp32", *VARIANTS)],
                   "embedding_cosine_loss": {m: {v: 1 - res_e[m][v].metrics.embedding_cosine for v in VARIANTS}
                                             for m in res_e}}
        console.print(encoder["table"])
    write_report([res[m]["fp32"] for m in res] + rows, work / "combined",
                 title="INT4 and INT8 weights: dense vs PHM (SmolLM2-135M-Instruct)")
    loss = {m: {v: 1.0 - res[m][v].metrics.top1_agreement for v in VARIANTS} for m in res}
    best = {m: min(("int4-rtn", "int4-awq", "int4-gptq"), key=lambda v: loss[m][v]) for m in res}  # default group
    table = _table(res)
    result = {
        **_run_fields(threads),
        "phm_student": f"given as --student (dir {phm.name})" if student else
                       "bench_int8.py's recipe (B=2, calibrated init + 8 local epochs + 40 abrupt KD steps)",
        "heldout_tokens_requested": tokens, "group": Int4Config.group,
        "rows": [{"model": m, "precision": v, **res[m][v].metrics.__dict__, "size_bytes": res[m][v].size_bytes}
                 for m in res for v in ("fp32", *VARIANTS)],
        "top1_loss": loss, "best_int4_method": best,
        "claim": "holds" if loss["PHM"][best["PHM"]] <= loss["dense"][best["dense"]] else "does not hold",
        "phm_sizes": {**sizes, "int4_fp16_over_fp32": round(sizes["int4-fp16"] / sizes["fp32"], 4)},
        "minilm": encoder,
        "wall_s": walls,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    console.print(table)
    console.print(f"top-1 loss at 4 bits (best method): dense {100 * loss['dense'][best['dense']]:.2f} % "
                  f"({best['dense']}), PHM {100 * loss['PHM'][best['PHM']]:.2f} % ({best['PHM']}); "
                  f"PHM --int4 --fp16 / fp32 bytes {result['phm_sizes']['int4_fp16_over_fp32']:.3f}")
    if docs_path is not None:
        _write_docs(docs_path, result, table, work / "combined" / "report.png")
    return 0


def _write_docs(path: Path, result: dict, table: str, plot: Path) -> None:
    """Replace the '## Measured' section of `path` (up to the next '## ' heading) with this run's figures."""
    marker = "## Measured"
    png = path.with_name("int4_smollm2.png")
    shutil.copy2(plot, png)
    loss, best = result["top1_loss"], result["best_int4_method"]
    body = (f"{marker}\n\n"
            f"Run: `python benchmarks/bench_int4.py --tokens {result['heldout_tokens_requested']}` "
            f"(`--student` the checkpoint below) on {result['date']}; machine: {result['machine']}.\n\n"
            f"- model: {result['model']}\n- PHM student: {result['phm_student']}\n"
            f"- INT4: group {result['group']}, weight-only, fp32 activations; int8-wo: `--int8 --int8-weights-only`\n"
            f"- wall time (s): {result['wall_s']}\n\n{table}\n\n"
            f"Top-1 loss at 4 bits, best method each: dense {100 * loss['dense'][best['dense']]:.2f} % "
            f"({best['dense']}), PHM {100 * loss['PHM'][best['PHM']]:.2f} % ({best['PHM']}): PHM loses "
            f"{'no more' if result['claim'] == 'holds' else 'more'} than the dense model here. "
            f"Sizes: the PHM student's `--int4 --fp16` files are {result['phm_sizes']['int4_fp16_over_fp32']:.3f}× "
            f"its fp32 export's ({result['phm_sizes']['int4-fp16'] / 1e6:.1f} MB vs "
            f"{result['phm_sizes']['fp32'] / 1e6:.1f} MB).\n\n![INT4 vs INT8, dense vs PHM]({png.name})\n\n")
    if result["minilm"]:
        enc = result["minilm"]
        body += (f"all-MiniLM-L6-v2 and its student ({enc['student']}), held-out sentences, each against its own "
                 f"FP32:\n\n{enc['table']}\n\n")
    _replace_section(path, marker, body, "INT4")


if __name__ == "__main__":
    sys.exit(main())
