"""Export and run at the user's scale: config-built models of real architectures, exported and run
as a user would, with the cost of each step measured.

For each shape and variant (dense; PHM B=2 from the projection of the same weights; PHM B=2
generated directly) the script builds the checkpoint once (generated weights, safetensors, cached in
--work), then runs, each in a child process of its own so its peak RSS is its own:
  - `phm-export CKPT --out ART [--fp16] [--int8]`: wall time, peak RSS, artifact bytes against the
    checkpoint's weight bytes at the float precision; with --int8 also its report.json (FP32, FP16
    and INT8 against FP32 on held-out text: the calibration and the report run layer by layer);
  - the `polygraphy run … --onnxrt` line of its commands.sh (ONNX Runtime vs the PyTorch reference
    outputs, per-output tolerances): passed or not, and its peak RSS;
  - `phm-run ART --prompt … --max-new-tokens N --json`: startup (command start to first prefill)
    and peak RSS, and its greedy tokens against transformers' `generate` on the checkpoint (fp32);
  - VLM shapes: the polygraphy line of every graph (vision, embed, decoder), and `phm-run ART --image
    IMG` on three photos of different sizes: the image tokens of each prompt against the grid
    transformers' own Qwen2-VL image processor gives the photo, prefill time and peak RSS. The
    checkpoint ships Qwen2.5-VL's image processor config (56² … 12,845,056 pixels); the export
    bounds it with --max-pixels (default 28²·1280, what a Jetson deployment would pass).
Results go to --json (benchmarks/results/export_scale.json) and, with --docs, the tables of every
benchmarks/results/export_scale*.json into docs/export.md between its bench_export_scale markers.

    python benchmarks/bench_export_scale.py --shapes qwen2-0.6b --variants dense,phm
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # `from tinymodels import save_char_tokenizer`: the test fixtures' tokenizer
BIN = Path(sys.executable).parent
# Real architectures' shapes (weights generated): the 0.6 B untied Qwen2 crossed protobuf's 2 GiB
# in fp32; the Qwen2.5-VL-3B text decoder is the mission's smallest target.
SHAPES = {
    "qwen2-tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),  # the test's
    "qwen2-0.6b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=False),
    "qwen2.5-vl-3b-text": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                               num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-vl-7b-text": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                               num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
}
# The whole VLM (phm-gen only): Qwen2.5-VL-3B's text decoder and vision tower (PHM on the language MLPs)
VLM_SHAPES = {
    "qwen2.5-vl-3b": dict(
        text_config=dict(SHAPES["qwen2.5-vl-3b-text"], max_position_embeddings=32768,
                         rope_scaling={"rope_type": "default", "type": "mrope", "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31]),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=True),
}
PROMPT = "The capital of France is"
# Qwen2.5-VL's preprocessor_config.json values (patch 14, merge 2, 56² … 12,845,056 pixels)
VLM_PROCESSOR = dict(patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=56 * 56, max_pixels=12845056)
PHOTOS = {"astronaut": (None, None),           # 512 × 512
          "chelsea": (None, None),             # 451 × 300 (w × h)
          "astronaut-portrait": (150, 330)}    # 180 × 512: a column crop of the astronaut
MARKERS = ("<!-- bench_export_scale:start -->", "<!-- bench_export_scale:end -->")


def _qwen2_config(shape: str):
    import transformers

    return transformers.Qwen2Config(**SHAPES[shape], max_position_embeddings=32768, bos_token_id=1, eos_token_id=2,
                                    pad_token_id=0, architectures=["Qwen2ForCausalLM"])


def _generated(name: str, dims: tuple, gen):
    """One generated weight: norms 1, biases 0, everything else N(0, 0.02)."""
    import torch

    if name.endswith("norm.weight"):
        return torch.ones(dims)
    return torch.zeros(dims) if name.endswith(".bias") else torch.randn(dims, generator=gen) * 0.02


def _partial_dir(out: Path) -> Path:
    """An empty `<out>.partial` beside `out` (an interrupted run's shards and temporaries removed),
    renamed to `out` once complete."""
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def dense_checkpoint(shape: str, out: Path) -> Path:
    """A dense HF checkpoint of the shape with generated weights (N(0, 0.02), norms 1), written shard by
    shard (≤ 1 GB each) so that generating a 3B model needs no more memory than one shard."""
    import torch
    import transformers
    from accelerate import init_empty_weights
    from safetensors.torch import save_file

    from tinymodels import save_char_tokenizer

    if (out / "config.json").is_file():
        return out
    cfg = _qwen2_config(shape)
    with init_empty_weights():
        names = {n: tuple(p.shape) for n, p in transformers.Qwen2ForCausalLM(cfg).state_dict().items()}
    if cfg.tie_word_embeddings:
        names.pop("lm_head.weight")
    gen = torch.Generator().manual_seed(0)
    tmp = _partial_dir(out)
    shards, shard, size, index = [], {}, 0, {}

    def flush():
        nonlocal shard, size
        if shard:
            name = f"model-{len(shards) + 1:05d}.safetensors"
            save_file(shard, str(tmp / name), metadata={"format": "pt"})
            shards.append(name)
            index.update({k: name for k in shard})
            shard, size = {}, 0

    for name, dims in names.items():
        t = _generated(name, dims, gen)
        if size + t.numel() * 4 > 1 << 30:
            flush()
        shard[name], size = t, size + t.numel() * 4
    flush()
    total = sum((tmp / f).stat().st_size for f in shards)
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                   "weight_map": index}, indent=1))
    cfg.save_pretrained(tmp)
    save_char_tokenizer(tmp)
    tmp.rename(out)
    return out


def phm_checkpoint(dense: Path, out: Path) -> Path:
    from phm.trainer import PHMConfig, drop_dense, inject_phm, load, save_phm_checkpoint, set_lambda

    if (out / "phm_config.json").is_file():
        return out
    model, config = load(dense), PHMConfig(num_bases=2, init="projection")
    targets = inject_phm(model, config)
    set_lambda(model, 1.0)
    drop_dense(model)
    return save_phm_checkpoint(model, config, targets, out, source_dir=dense, overwrite=True)


def generated_phm_checkpoint(shape: str, out: Path) -> Path:
    """A PHM (B = 2) checkpoint of the shape generated directly (cores N(0, 0.02), no dense model and
    no projection): for shapes whose fp32 dense copy this machine cannot hold. The one
    model.safetensors is written tensor by tensor, so generating it needs one tensor's memory."""
    import torch
    import transformers
    from accelerate import init_empty_weights

    from phm.trainer import PHMConfig, empty_model, phm_targets
    from phm.trainer.arch import find_mlp_blocks
    from phm.trainer.checkpoint import PHM_CONFIG_NAME, WEIGHTS_NAME, phm_config_doc
    from tinymodels import save_char_tokenizer

    if (out / PHM_CONFIG_NAME).is_file():
        return out
    if shape in VLM_SHAPES:
        cls = transformers.Qwen2_5_VLForConditionalGeneration
        cfg = transformers.Qwen2_5_VLConfig(**VLM_SHAPES[shape], bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                            architectures=[cls.__name__])
    else:
        cls, cfg = transformers.Qwen2ForCausalLM, _qwen2_config(shape)
    config = PHMConfig(num_bases=2)
    with init_empty_weights():
        dense = cls(cfg)
    doc = phm_config_doc(config, phm_targets(dense, config), find_mlp_blocks(dense, config.towers))
    tmp = _partial_dir(out)
    cfg.save_pretrained(tmp)
    (tmp / PHM_CONFIG_NAME).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    save_char_tokenizer(tmp)
    (tmp / WEIGHTS_NAME).touch()  # the dir must name its weights file; empty_model reads none of it
    shapes = {n: tuple(t.shape) for n, t in empty_model(tmp).state_dict().items()}
    if cfg.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dims in shapes.items():
        size = 4 * int(torch.Size(dims).numel())
        header[name] = {"dtype": "F32", "shape": list(dims), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    gen = torch.Generator().manual_seed(0)
    with open(tmp / WEIGHTS_NAME, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name, dims in shapes.items():
            f.write(_generated(name, dims, gen).numpy().tobytes())
    tmp.rename(out)
    return out


def ship_image_processor(ckpt: Path) -> None:
    """What the real model dir ships and the generated one lacks: Qwen2.5-VL's image processor config."""
    from transformers import Qwen2VLImageProcessorPil

    if not (ckpt / "preprocessor_config.json").is_file():
        Qwen2VLImageProcessorPil(**VLM_PROCESSOR).save_pretrained(ckpt)


def photo_files(work: Path) -> dict[str, Path]:
    """The three test photos (scikit-image's bundled ones) as PNG files under `work`."""
    import skimage.data
    from PIL import Image

    out = {}
    for name, (left, right) in PHOTOS.items():
        path = work / "photos" / f"{name}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(getattr(skimage.data, name.split("-")[0])()[:, left:right]).save(path)
        out[name] = path
    return out


def image_rows(art: Path, work: Path, max_pixels: int, console) -> list[dict]:
    """phm-run with each photo: its image tokens against the HF processor's grid for it, timings, RSS."""
    from PIL import Image
    from transformers import Qwen2VLImageProcessorPil

    hf = Qwen2VLImageProcessorPil(**{**VLM_PROCESSOR, "max_pixels": max_pixels})
    image_token = json.loads((art / "hf" / "config.json").read_text())["image_token_id"]
    rows = []
    for name, path in photo_files(work).items():
        console.log(f"phm-run --image {path.name}")
        with Image.open(path) as img:
            size = img.size
            grid = [int(v) for v in hf(images=[img.convert("RGB")], return_tensors="np")["image_grid_thw"][0]]
        proc, wall, rss = measured([BIN / "phm-run", art, "--image", path, "--prompt", "Describe the image.",
                                    "--max-new-tokens", 2, "--json"])
        row = {"photo": name, "size": list(size), "hf_grid": grid, "hf_image_tokens": grid[1] * grid[2] // 4}
        if proc.returncode != 0:
            rows.append({**row, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]})
            continue
        out = json.loads(proc.stdout)
        rows.append({**row, "image_tokens": out["prompt_ids"].count(image_token), "prompt_tokens": len(out["prompt_ids"]),
                     "startup_s": round(out["startup_ms"] / 1e3, 2), "prefill_s": round(out["prefill_ms"] / 1e3, 1),
                     "wall_s": round(wall, 1), "peak_rss_gb": round(rss, 2)})
    return rows


def measured(argv: list, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """(the process, wall s, its peak RSS in GB): run through a fresh wrapper whose only child it is."""
    wrapper = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(p.returncode)")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper, *map(str, argv)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=cwd)
    wall = time.perf_counter() - t
    lines = proc.stderr.rstrip().splitlines()
    rss_gb = int(lines[-1]) / 2**20 if lines and lines[-1].isdigit() else float("nan")
    proc.stderr = "\n".join(lines[:-1])
    return proc, wall, rss_gb


def weight_bytes(ckpt: Path, fp16: bool) -> int:
    """Bytes of the checkpoint's weights at the export precision (the files hold fp32)."""
    total = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    return total // 2 if fp16 else total


def reference_tokens(ckpt: Path, prompt_ids: list[int], new_tokens: int) -> list[int]:
    import torch

    from phm.trainer import load

    model = load(ckpt)
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def run_one(shape: str, variant: str, args, console) -> dict:
    work = args.work / shape
    if variant == "phm-gen":
        ckpt = generated_phm_checkpoint(shape, work / "phm-gen-b2")
    else:
        dense = dense_checkpoint(shape, work / "dense")
        ckpt = dense if variant == "dense" else phm_checkpoint(dense, work / "phm-b2")
    vlm = shape in VLM_SHAPES
    if vlm:
        ship_image_processor(ckpt)
    art = work / f"art-{variant}{'-fp16' if args.fp16 else ''}{'-int8' if args.int8 else ''}"
    if art.exists():
        shutil.rmtree(art)
    console.log(f"{shape} {variant}: exporting")
    proc, export_s, export_rss = measured([BIN / "phm-export", ckpt, "--out", art, *(["--fp16"] if args.fp16 else []),
                                           *(["--int8"] if args.int8 else []),
                                           *(["--max-pixels", args.max_pixels] if vlm else [])])
    row = {"shape": shape, "variant": variant,
           "precision": ("fp16" if args.fp16 else "fp32") + ("+int8" if args.int8 else ""),
           "weight_bytes": weight_bytes(ckpt, args.fp16), "export_ok": proc.returncode == 0,
           "export_s": round(export_s, 1), "export_peak_rss_gb": round(export_rss, 2)}
    if proc.returncode != 0:
        row["export_error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return row
    row["artifact_bytes"] = sum(p.stat().st_size for p in art.rglob("*") if p.is_file())
    row["artifacts_over_weights"] = round(row["artifact_bytes"] / row["weight_bytes"], 3)
    row["export_rss_over_weights"] = round(export_rss * 2**30 / row["weight_bytes"], 2)
    if args.int8:
        row["int8_report"] = {r["precision"]: {k: r["metrics"][k] for k in ("logit_cosine", "top1_agreement",
                                                                            "perplexity")}
                              for r in json.loads((art / "report.json").read_text())}
    if args.export_only:
        return row
    commands = json.loads((art / "manifest.json").read_text())["commands"]
    passed, check_rss = {}, 0.0
    for kind in commands if vlm else ["decoder"]:
        console.log(f"{shape} {variant}: polygraphy (commands.sh: ONNX Runtime vs PyTorch, {kind})")
        check = shlex.split(commands[kind]["polygraphy_onnxrt"])
        proc, check_s, rss = measured([BIN / check[0], *check[1:]], cwd=art)
        passed[kind], check_rss = proc.returncode == 0 and "PASSED" in proc.stdout + proc.stderr, max(check_rss, rss)
    row.update(polygraphy_passed=all(passed.values()), polygraphy_graphs=passed,
               polygraphy_peak_rss_gb=round(check_rss, 2))
    if vlm:
        row["images"] = image_rows(art, work, args.max_pixels, console)
    console.log(f"{shape} {variant}: phm-run")
    proc, run_s, run_rss = measured([BIN / "phm-run", art, "--prompt", PROMPT, "--max-new-tokens", args.new_tokens,
                                     "--json"])
    if proc.returncode != 0:
        row["run_error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return row
    out = json.loads(proc.stdout)
    row.update(run_s=round(run_s, 2), startup_s=round(out["startup_ms"] / 1e3, 2), run_peak_rss_gb=round(run_rss, 2))
    if not (args.fp16 or args.int8):  # fp16/int8 greedy may differ from fp32 torch legitimately; fp32 must not
        row["greedy_equals_transformers"] = out["tokens"] == reference_tokens(ckpt, out["prompt_ids"],
                                                                                args.new_tokens)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| shape | variant | precision | weights | export | peak RSS (× weights) | artifacts (× weights) | "
             "polygraphy (ORT vs PyTorch) | phm-run startup | greedy = transformers |",
             "|---|---|---|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        if not r["export_ok"]:
            lines.append(f"| {r['shape']} | {r['variant']} | {r['precision']} | {r['weight_bytes'] / 1e9:.2f} GB | "
                         f"failed: {r['export_error']} | | | | | |")
            continue
        lines.append(f"| {r['shape']} | {r['variant']} | {r['precision']} | {r['weight_bytes'] / 1e9:.2f} GB | "
                     f"{r['export_s']:.0f} s | {r['export_peak_rss_gb']:.1f} GB ({r['export_rss_over_weights']:.2f}×) | "
                     f"{r['artifact_bytes'] / 1e9:.2f} GB ({r['artifacts_over_weights']:.3f}×) | "
                     f"{'passed' if r.get('polygraphy_passed') else 'FAILED' if 'polygraphy_passed' in r else 'n/a'} | "
                     f"{'%.2f s' % r['startup_s'] if 'startup_s' in r else 'n/a'} | "
                     f"{r.get('greedy_equals_transformers', 'n/a')} |")
    return "\n".join(lines)


def int8_table(rows: list[dict]) -> str:
    """The --int8 exports' report.json: each precision against the model's FP32 on held-out text."""
    lines = ["| shape | variant | precision | logit cosine | top-1 agreement | perplexity |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        for precision, m in r.get("int8_report", {}).items():
            lines.append(f"| {r['shape']} | {r['variant']} | {precision} | {m['logit_cosine']:.4f} | "
                         f"{100 * m['top1_agreement']:.2f} % | {m['perplexity']:.2f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def image_table(rows: list[dict]) -> str:
    """phm-run --image on the VLM shapes: one line per photo."""
    lines = ["| shape | photo (w × h) | HF processor grid | image tokens: HF / phm-run | prefill (vision + prompt) | phm-run peak RSS |",
             "|---|---|---|---:|---:|---:|"]
    for r in rows:
        for im in r.get("images", []):
            got = im.get("image_tokens", f"failed: {im.get('error')}")
            lines.append(f"| {r['shape']} | {im['photo']} ({im['size'][0]} × {im['size'][1]}) | "
                         f"{'×'.join(map(str, im['hf_grid']))} | {im['hf_image_tokens']} / {got} | "
                         f"{im.get('prefill_s', 'n/a')} s | {im.get('peak_rss_gb', 'n/a')} GB |")
    return "\n".join(lines) if len(lines) > 2 else ""


def write_docs(path: Path, block: str) -> None:
    from phm.common.fsutil import atomic_write_text

    text = path.read_text()
    start, end = MARKERS
    head, rest = text.split(start)
    atomic_write_text(path, f"{head}{start}\n{block}\n{end}{rest.split(end)[1]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="qwen2-0.6b",
                    help=f"comma-separated: {', '.join(SHAPES)}; with --variants phm-gen also {', '.join(VLM_SHAPES)}")
    ap.add_argument("--variants", default="dense,phm",
                    help="comma-separated: dense, phm (projection of the dense weights), phm-gen (PHM weights "
                         "generated directly: shapes whose dense fp32 copy does not fit in memory)")
    ap.add_argument("--export-only", action="store_true",
                    help="export and measure it, no ONNX Runtime check or phm-run (models whose fp16 graph ONNX "
                         "Runtime's CPU provider would widen to fp32 beyond this machine's memory)")
    ap.add_argument("--fp16", action="store_true", help="export --fp16 (greedy is then not compared)")
    ap.add_argument("--int8", action="store_true", help="export --int8 (greedy is then not compared; the report's "
                                                        "rows are recorded)")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--max-pixels", type=int, default=28 * 28 * 1280,
                    help="VLM shapes: phm-export --max-pixels (the image range and the vision profile's maximum)")
    ap.add_argument("--work", type=Path, default=None, help="checkpoints and artifacts [default: $PHM_CACHE/export_scale]")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "export_scale.json")
    ap.add_argument("--docs", type=Path, default=None, help="rewrite this doc's bench_export_scale block")
    args = ap.parse_args()
    from rich.console import Console

    from phm.trainer.models import cache_root

    from phm.common.fsutil import atomic_write_text

    console = Console()
    args.work = args.work or cache_root() / "export_scale"
    if args.shapes:  # --shapes "" --docs …: only render the results files into the doc
        rows = [run_one(shape, variant, args, console) for shape in args.shapes.split(",")
                for variant in args.variants.split(",")]
        result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                             f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
                  "command": " ".join(sys.argv), "rows": rows}
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
        console.print(table(rows))
        for extra in (int8_table(rows), image_table(rows)):
            if extra:
                console.print(extra)
    if args.docs:  # every results file of this script, each with the command and machine that made it
        blocks = []
        for path in sorted(args.json.parent.glob("export_scale*.json")):
            res = json.loads(path.read_text())
            extras = "".join(t + "\n\n" for t in (int8_table(res["rows"]), image_table(res["rows"])) if t)
            blocks.append(f"{table(res['rows'])}\n\n{extras}`{res['command']}` ({res['date']}, {res['machine']})")
        write_docs(args.docs, "\n\n".join(blocks))


if __name__ == "__main__":
    main()
