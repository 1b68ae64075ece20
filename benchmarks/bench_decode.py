"""Decode benchmark: PHM artifacts vs the dense artifacts of the same model, ONNX Runtime CPU fp32.

    python benchmarks/bench_decode.py [--threads 1 2] [--rounds 7] [--new-tokens 64] [--prompt-tokens 32]
                                      [--work DIR] [--phm-b2 CKPT] [--phm-b1 CKPT] [--no-plain] [--quant]
                                      [--docs docs/runtime.md]

SmolLM2-135M (trainer/models.py `load_smollm2`) is exported three times with phm-export's
`export_model`: dense, PHM B=2 and PHM B=1 (every MLP projection, n = 2). The PHM checkpoints are
init-only (projection start, no distillation): speed does not depend on the core values. Pass
trained checkpoints with --phm-b2 / --phm-b1 to time those instead. Exports are cached under
--work and reused when their manifest is there.

For each intra-op thread count (set explicitly), all variants are loaded into one process and
timed interleaved: each round runs every variant once (order rotated per round) through the
runtime's generation loop (`OrtBackend` on the graph phm-export prepared for ONNX Runtime, PHM nodes
lowered to specialised standard ops and shape arithmetic folded; prefill +
`--new-tokens` greedy steps, EOS ignored), so the shared machine's load hits all of them alike.
One more variant, "phm B=2 generic", runs the same B=2 file on its generic reference functions
(the lean pass still applied), to show what the lowering buys (`--no-generic` leaves it out);
"dense plain" and "phm B=2 plain" run dense and B=2 without the lean pass (the traced shape
arithmetic left as exported, phm.export.lean), to show what that buys (`--no-plain` leaves them
out). These variants are written beside the artifacts by `variant_graph`, from the portable
`decoder.onnx` with phm.export's own passes; their ratios are paired with "dense plain". `--quant`
adds dense and B=2 exported with `--int4` (their ratios paired with "dense int4": what PHM stacks
with at 4 bits) and with `--int8` (paired with the fp32 dense). The table gives the median over rounds and
the spread (min–max); ratios to dense are paired per round (the variants of one round ran back
to back under about the same load) and summarised by their median and quartiles (decode tokens/s; prefill: dense ms / PHM ms). Results go to
benchmarks/results/decode_smollm2_cpu.json and, with --docs, into the measured-figures block of
docs/runtime.md (between its bench_decode markers).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench_decode:begin -->", "<!-- bench_decode:end -->"


def phm_checkpoint(dense_dir: Path, num_bases: int, out: Path) -> Path:
    """Init-only PHM checkpoint of the dense model: every MLP projection PHM with `num_bases`."""
    from phm.trainer import PHMConfig, drop_dense, inject_phm, load, save_phm_checkpoint, set_lambda

    if (out / "phm_config.json").is_file():
        return out
    model = load(dense_dir)
    config = PHMConfig(num_bases=num_bases)
    targets = inject_phm(model, config)
    set_lambda(model, 1.0)
    drop_dense(model)
    return save_phm_checkpoint(model, config, targets, out, source_dir=dense_dir, overwrite=True)


def exported(model_dir: Path, out: Path, weights: str = "float") -> Path:
    """The artifacts of `model_dir` (weights "float", "int4" or "int8": phm-export's --int4 / --int8)."""
    from phm.export import ExportConfig, Int4Config, Int8Config, export_model

    from phm.common.artifacts import MANIFEST_VERSION

    manifest = out / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("format_version") == MANIFEST_VERSION:
        return out  # reused; artifacts of an older format are exported again
    quant = {"float": {}, "int4": {"int4": Int4Config()}, "int8": {"int8": Int8Config()}}[weights]
    return export_model(model_dir, ExportConfig(overwrite=True, **quant), out)


def run_once(backend, ids: np.ndarray, new_tokens: int):
    from phm.runtime.generate import GenerationConfig, generate

    res = generate(backend, ids, GenerationConfig(max_new_tokens=new_tokens))  # no stop ids: always N tokens
    return res.timings


def write_docs(docs: Path, block: str) -> None:
    text = docs.read_text() if docs.is_file() else ""
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{docs} has no {BEGIN} … {END} block to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    docs.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="ORT intra-op thread counts to time")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--work", type=Path, default=None, help="export cache dir (default $PHM_CACHE/bench_decode)")
    ap.add_argument("--phm-b2", type=Path, default=None, help="existing B=2 PHM checkpoint to time")
    ap.add_argument("--phm-b1", type=Path, default=None, help="existing B=1 PHM checkpoint to time")
    ap.add_argument("--no-b1", action="store_true", help="leave out B=1")
    ap.add_argument("--no-generic", action="store_true", help="leave out B=2 on the unlowered reference functions")
    ap.add_argument("--no-plain", action="store_true", help="leave out dense and B=2 without the lean pass")
    ap.add_argument("--quant", action="store_true",
                    help="add dense and B=2 exported with --int4 (rows 'int4', paired with 'dense int4') and --int8")
    ap.add_argument("--docs", type=Path, default=None, help="fill the measured block of this markdown file")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "decode_smollm2_cpu.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    console = Console()

    from phm.common.fsutil import atomic_write_text
    from phm.trainer.models import cache_root, load_tokenizer, smollm2_dir

    work = args.work or cache_root() / "bench_decode"
    work.mkdir(parents=True, exist_ok=True)
    dense_dir = smollm2_dir()
    variants = {"dense": dense_dir,
                "phm B=2": args.phm_b2 or phm_checkpoint(dense_dir, 2, work / "ckpt-b2")}
    if not args.no_b1:
        variants["phm B=1"] = args.phm_b1 or phm_checkpoint(dense_dir, 1, work / "ckpt-b1")
    arts = {}
    for name, ckpt in variants.items():
        console.log(f"export {name} ({ckpt})")
        arts[name] = exported(ckpt, work / f"art-{name.replace(' ', '').replace('=', '')}")
    if args.quant:
        for name in ("dense", "phm B=2"):
            for weights in ("int4", "int8"):
                console.log(f"export {name} --{weights}")
                arts[f"{name} {weights}"] = exported(variants[name], work / f"art-{name.replace(' ', '').replace('=', '')}-"
                                                     f"{weights}", weights)

    tok = load_tokenizer(dense_dir)
    text = "The quick brown fox jumps over the lazy dog. " * 16
    ids = np.array([tok(text)["input_ids"][: args.prompt_tokens]], dtype=np.int64)
    params = {n: json.loads((a / "manifest.json").read_text())["params"]["params_after"] for n, a in arts.items()}
    runs = {name: (art, True, True) for name, art in arts.items()}  # variant -> (artifacts, lower, lean)
    if not args.no_generic:
        runs["phm B=2 generic"] = (arts["phm B=2"], False, True)
        params["phm B=2 generic"] = params["phm B=2"]
    if not args.no_plain:
        for name in ("dense", "phm B=2"):
            runs[f"{name} plain"] = (arts[name], True, False)
            params[f"{name} plain"] = params[name]
    rows = []
    for threads in args.threads:
        rows += measure(runs, ids, threads, args, console, params)
    import onnxruntime

    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
            "onnxruntime": onnxruntime.__version__, "threads": args.threads, "rounds": args.rounds,
            "new_tokens": args.new_tokens, "prompt_tokens": int(ids.shape[1]),
            "load_average_at_end": os.getloadavg(), "checkpoints": {n: str(c) for n, c in variants.items()}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    console.log(f"wrote {args.json}")
    if args.docs:
        lines = [f"Measured {meta['date']} on {meta['machine']} (load average at the end "
                 f"{meta['load_average_at_end'][0]:.1f}); ONNX Runtime {meta['onnxruntime']} CPU EP, fp32; "
                 f"prompt {ids.shape[1]} tokens, {args.new_tokens} new tokens (greedy); {args.rounds} interleaved "
                 "rounds. tok/s and ms: median (min–max). × dense: median of the per-round ratios to dense "
                 "(quartiles); prefill × dense = dense ms / variant ms; the plain rows are paired with "
                 "\"dense plain\", the int4 rows with \"dense int4\".", "",
                 "| threads | variant | params | decode tok/s | decode × dense | prefill ms | prefill × dense |",
                 "|---:|---|---:|---:|---:|---:|---:|"]
        for row in rows:
            d, p = row["decode_tok_s_all"], row["prefill_ms_all"]
            lines.append(f"| {row['threads']} | {row['variant']} | {row['params'] / 1e6:.1f} M | "
                         f"{row['decode_tok_s']:.1f} ({min(d):.1f}–{max(d):.1f}) | {row['decode_speedup']:.2f} "
                         f"({row['decode_speedup_q1_q3'][0]:.2f}–{row['decode_speedup_q1_q3'][1]:.2f}) | "
                         f"{row['prefill_ms']:.0f} ({min(p):.0f}–{max(p):.0f}) | {row['prefill_speedup']:.2f} |")
        write_docs(args.docs, "\n".join(lines))
        console.log(f"updated {args.docs}")


def variant_graph(art: Path, lower: bool, lean: bool) -> Path:
    """The decoder graph with the given passes: what phm-export prepared (both), or a variant written
    once beside the artifacts from the portable decoder.onnx (weights inline: SmolLM2 is small)."""
    from phm.common.fsutil import atomic_write_bytes

    if lower and lean:
        return art / json.loads((art / "manifest.json").read_text())["graphs"]["decoder"]["ort_file"]
    path = art.parent / f"{art.name}-variant-lower{int(lower)}-lean{int(lean)}.onnx"
    if not path.is_file():
        import onnx

        from phm.export.lean import lean_graph
        from phm.export.lower import lower_phm

        model = onnx.load(str(art / "decoder.onnx"))
        if lower:
            lower_phm(model)
        if lean:
            lean_graph(model)
        atomic_write_bytes(path, model.SerializeToString())
    return path


def measure(runs: dict, ids: np.ndarray, threads: int, args, console, params: dict) -> list[dict]:
    """Interleaved rounds of every variant at one thread count -> one row per variant."""
    from phm.runtime.ort_backend import OrtBackend

    backends = {name: OrtBackend(variant_graph(art, lower, lean), providers=["CPUExecutionProvider"],
                                 threads=threads) for name, (art, lower, lean) in runs.items()}
    for b in backends.values():  # warm-up: first-run allocations and kernel choices
        run_once(b, ids, 4)
    samples = {name: {"decode_tok_s": [], "prefill_ms": []} for name in backends}
    names = list(backends)
    for r in track(range(args.rounds), description=f"{threads} thread(s): interleaved rounds"):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t = run_once(backends[name], ids, args.new_tokens)
            samples[name]["decode_tok_s"].append(t.decode_tokens_per_s)
            samples[name]["prefill_ms"].append(t.prefill_ms)
    med = {n: {k: statistics.median(v) for k, v in s.items()} for n, s in samples.items()}
    table = Table(title=f"SmolLM2-135M, ORT CPU fp32, {threads} thread(s), prompt {ids.shape[1]} tok, "
                        f"{args.new_tokens} new tok, median of {args.rounds} interleaved rounds")
    for col in ("variant", "params (M)", "decode tok/s", "min–max", "× dense (q1–q3)", "prefill ms", "min–max",
                "× dense"):
        table.add_column(col, justify="right")
    rows = []
    for n in names:
        d, p = samples[n]["decode_tok_s"], samples[n]["prefill_ms"]
        # Paired per round (the variants of a round ran back to back under about the same load):
        # median of the per-round ratios, and their quartiles as the noise figure.
        # plain rows: ratio to the plain dense graph; int4 rows: to dense int4 (what PHM stacks with)
        ref = "dense plain" if n.endswith(" plain") else "dense int4" if n.endswith(" int4") else "dense"
        paired = [x / y for x, y in zip(d, samples[ref]["decode_tok_s"])]
        q1, dec_ratio, q3 = statistics.quantiles(paired, n=4) if len(paired) > 1 else [paired[0]] * 3
        pre_ratio = statistics.median(y / x for x, y in zip(p, samples[ref]["prefill_ms"]))  # > 1: faster
        rows.append({"threads": threads, "variant": n, "params": params[n], "decode_tok_s": med[n]["decode_tok_s"],
                     "decode_tok_s_all": d, "decode_speedup": dec_ratio, "decode_speedup_q1_q3": [q1, q3],
                     "decode_speedup_all": paired, "prefill_ms": med[n]["prefill_ms"], "prefill_ms_all": p,
                     "prefill_speedup": pre_ratio})
        table.add_row(n, f"{params[n] / 1e6:.1f}", f"{med[n]['decode_tok_s']:.1f}", f"{min(d):.1f}–{max(d):.1f}",
                      f"{dec_ratio:.2f} ({q1:.2f}–{q3:.2f})", f"{med[n]['prefill_ms']:.0f}",
                      f"{min(p):.0f}–{max(p):.0f}", f"{pre_ratio:.2f}")
    console.print(table)
    return rows


if __name__ == "__main__":
    main()
