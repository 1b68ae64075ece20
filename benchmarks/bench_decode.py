"""Decode benchmark: PHM artifacts vs the dense artifacts of the same model, ONNX Runtime CPU fp32.

    python benchmarks/bench_decode.py [--threads 1 2] [--rounds 7] [--new-tokens 64] [--prompt-tokens 32]
                                      [--work DIR] [--phm-b2 CKPT] [--phm-b1 CKPT] [--no-plain] [--no-traced]
                                      [--quant] [--no-genai] [--docs docs/runtime.md]

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
out); "dense traced" and "phm B=2 traced" run the prepared graph without the attention fusion
(the traced attention, concatenating the KV cache every step, phm.export.ort_fuse), to show what
that buys (`--no-traced` leaves them out). These variants are written beside the artifacts by
`variant_graph`, from the portable `decoder.onnx` with phm.export's own passes; the plain ratios are
paired with "dense plain", the traced ones with "dense traced". `--quant`
adds dense and B=2 exported with `--int4` (their ratios paired with "dense int4": what PHM stacks
with at 4 bits), with `--int4 --int4-accuracy 4` ("int4a4": MatMulNBits with INT8 activations, paired
with "dense int4a4"), the same with `--int4-lm-head` ("int4a4h": what ONNX Runtime GenAI's int4
model quantizes too) and with `--int8` (paired with the fp32 dense); `--quant int4 int4a4h` picks. Where onnxruntime-genai is installed
(`pip install onnxruntime-genai onnx-ir`; `--no-genai` leaves it out), ONNX Runtime GenAI's own model
builder exports the same HF dir (fp32, and int4 with `--quant`: its CPU default, accuracy level 4,
which also quantizes the activations to INT8) and its C++ generation loop runs in the same rounds
as reference rows ("genai fp32", "genai int4"); llama.cpp rows are left out here (not installed).
Every row also counts the nodes of the graph ONNX Runtime runs after its own optimizations (one
decode step). The table gives the median over rounds and
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
    """The artifacts of `model_dir` (weights "float", "int4", "int4a4", "int4a4h" or "int8": phm-export's
    --int4, --int4 --int4-accuracy 4, the same with --int4-lm-head, --int8)."""
    from phm.export import ExportConfig, Int4Config, Int8Config, export_model

    from phm.common.artifacts import MANIFEST_VERSION

    manifest = out / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        if m.get("format_version") == MANIFEST_VERSION and "ort_fusion" in m["graphs"]["decoder"]:
            return out  # reused; artifacts of an older exporter are exported again
    quant = {"float": {}, "int4": {"int4": Int4Config()}, "int4a4": {"int4": Int4Config(accuracy=4)},
             "int4a4h": {"int4": Int4Config(accuracy=4, lm_head=True)},
             "int8": {"int8": Int8Config()}}[weights]
    return export_model(model_dir, ExportConfig(overwrite=True, **quant), out)


def run_once(backend, ids: np.ndarray, new_tokens: int):
    from phm.runtime.generate import GenerationConfig, generate

    if isinstance(backend, GenaiRunner):
        return backend.run(ids, new_tokens)
    res = generate(backend, ids, GenerationConfig(max_new_tokens=new_tokens))  # no stop ids: always N tokens
    return res.timings


class GenaiRunner:
    """ONNX Runtime GenAI's generator on a model its builder wrote: greedy, `new_tokens` tokens
    (EOS cannot end it early: min_length), timed as phm.runtime.generate times ours."""

    def __init__(self, model_dir: Path, threads: int):
        import onnxruntime_genai as og

        config = og.Config(str(model_dir))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self.og, self.model = og, og.Model(config)

    def run(self, ids: np.ndarray, new_tokens: int):
        import time

        from phm.runtime.generate import Timings

        total = ids.shape[1] + new_tokens
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        gen = self.og.Generator(self.model, params)
        t0 = time.perf_counter()
        gen.append_tokens(ids.astype(np.int32))  # prefill: the first token's logits
        t1 = time.perf_counter()
        steps = 0
        while not gen.is_done():
            gen.generate_next_token()
            steps += 1
        t2 = time.perf_counter()
        # generate_next_token picks a token from the logits it has, then runs the model for the next
        # ones (but not after the last): steps - 1 model runs, as our loop's new_tokens - 1 decodes
        return Timings((t1 - t0) * 1e3, int(ids.size), (t2 - t1) * 1e3, max(steps - 1, 0), 0.0)


def genai_model(hf_dir: Path, precision: str, out: Path) -> Path:
    """ONNX Runtime GenAI's model builder on `hf_dir` (cached in `out`)."""
    import subprocess
    import sys

    if not (out / "genai_config.json").is_file():
        subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
                        "-p", precision, "-e", "cpu", "-c", str(out.parent / "genai-hf-cache")], check=True,
                       stdout=subprocess.DEVNULL)
    return out


def optimized_nodes(path: Path, threads: int) -> int:
    """Nodes of `path` after ONNX Runtime's optimizations at the runtime's level (ORT_ENABLE_ALL), as
    its CPU session runs them: what one decode step executes."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "opt.data")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return len(onnx.load(str(Path(tmp) / "opt.onnx"), load_external_data=False).graph.node)


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
    ap.add_argument("--no-traced", action="store_true", help="leave out dense and B=2 without the attention fusion")
    ap.add_argument("--no-genai", action="store_true", help="leave out ONNX Runtime GenAI's reference rows")
    ap.add_argument("--quant", nargs="*", choices=["int4", "int4a4", "int4a4h", "int8"], default=None,
                    help="add dense and B=2 exported with --int4 (rows 'int4', paired with 'dense int4'), --int4 "
                         "--int4-accuracy 4 ('int4a4'), the same with --int4-lm-head ('int4a4h') and --int8 "
                         "(int4, int4a4 and int8 without a value)")
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
    quant = [] if args.quant is None else args.quant or ["int4", "int4a4", "int8"]
    for weights in quant:
        for name in ("dense", "phm B=2"):
            console.log(f"export {name} --{weights}")
            arts[f"{name} {weights}"] = exported(variants[name], work / f"art-{name.replace(' ', '').replace('=', '')}-"
                                                 f"{weights}", weights)

    tok = load_tokenizer(dense_dir)
    text = "The quick brown fox jumps over the lazy dog. " * 16
    ids = np.array([tok(text)["input_ids"][: args.prompt_tokens]], dtype=np.int64)
    params = {n: json.loads((a / "manifest.json").read_text())["params"]["params_after"] for n, a in arts.items()}
    runs = {name: (art, True, True, True) for name, art in arts.items()}  # variant -> (artifacts, lower, lean, fuse)
    if not args.no_generic:
        runs["phm B=2 generic"] = (arts["phm B=2"], False, True, True)
        params["phm B=2 generic"] = params["phm B=2"]
    for flag, suffix, passes in ((args.no_traced, "traced", (True, True, False)),
                                 (args.no_plain, "plain", (True, False, False))):
        if not flag:
            for name in ("dense", "phm B=2"):
                runs[f"{name} {suffix}"] = (arts[name], *passes)
                params[f"{name} {suffix}"] = params[name]
    if not args.no_genai and _genai_installed():
        for precision in ("fp32", "int4") if {"int4", "int4a4", "int4a4h"} & set(quant) else ("fp32",):
            console.log(f"ONNX Runtime GenAI model builder: {precision}")
            runs[f"genai {precision}"] = genai_model(dense_dir, precision, work / f"genai-{precision}")
            params[f"genai {precision}"] = params["dense"]
    rows = []
    for threads in args.threads:
        rows += measure(runs, ids, threads, args, console, params)
    import onnxruntime

    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
            "onnxruntime": onnxruntime.__version__, "threads": args.threads, "rounds": args.rounds,
            "new_tokens": args.new_tokens, "prompt_tokens": int(ids.shape[1]), "onnxruntime_genai": _genai_version(),
            "load_average_at_end": os.getloadavg(), "checkpoints": {n: str(c) for n, c in variants.items()}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    console.log(f"wrote {args.json}")
    if args.docs:
        write_docs(args.docs, docs_block(meta, rows))
        console.log(f"updated {args.docs}")


def docs_block(meta: dict, rows: list) -> str:
    """The measured-figures block of docs/runtime.md for one run (meta and rows as in the JSON)."""
    lines = [f"Measured {meta['date']} on {meta['machine']} (load average at the end "
             f"{meta['load_average_at_end'][0]:.1f}); ONNX Runtime {meta['onnxruntime']} CPU EP; "
             f"prompt {meta['prompt_tokens']} tokens, {meta['new_tokens']} new tokens (greedy); {meta['rounds']} interleaved "
             "rounds. tok/s and ms: median (min–max). × dense: median of the per-round ratios to dense "
             "(quartiles); prefill × dense = dense ms / variant ms; the plain rows are paired with "
             "\"dense plain\", the traced rows with \"dense traced\", the int4 rows with \"dense int4\", "
             "the int4a4(h) rows with \"dense int4a4(h)\"; × GenAI: against ONNX Runtime GenAI "
             f"{meta.get('onnxruntime_genai')}'s fp32 (dense) or int4 model (the int4 rows) in the same round; "
             "nodes: the graph ONNX Runtime runs after its optimizations.", "",
             "| threads | variant | params | nodes | decode tok/s | decode × dense | × GenAI | prefill ms | "
             "prefill × dense |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        d, p, g = row["decode_tok_s_all"], row["prefill_ms_all"], row.get("vs_genai")
        lines.append(f"| {row['threads']} | {row['variant']} | {row['params'] / 1e6:.1f} M | {row['nodes']} | "
                     f"{row['decode_tok_s']:.1f} ({min(d):.1f}–{max(d):.1f}) | {row['decode_speedup']:.2f} "
                     f"({row['decode_speedup_q1_q3'][0]:.2f}–{row['decode_speedup_q1_q3'][1]:.2f}) | "
                     f"{'' if g is None else f'{g[1]:.2f} ({g[0]:.2f}–{g[2]:.2f})'} | "
                     f"{row['prefill_ms']:.0f} ({min(p):.0f}–{max(p):.0f}) | {row['prefill_speedup']:.2f} |")
    return "\n".join(lines)


def variant_graph(art: Path, lower: bool, lean: bool, fuse: bool) -> Path:
    """The decoder graph with the given passes: what phm-export prepared (all three), or a variant
    written once beside the artifacts from the portable decoder.onnx (weights inline: SmolLM2 is small)."""
    from phm.common.fsutil import atomic_write_bytes

    if lower and lean and fuse:
        return art / json.loads((art / "manifest.json").read_text())["graphs"]["decoder"]["ort_file"]
    path = art.parent / f"{art.name}-variant-lower{int(lower)}-lean{int(lean)}-fuse{int(fuse)}.onnx"
    if not path.is_file():
        import onnx

        from phm.export.lean import lean_graph
        from phm.export.lower import lower_phm
        from phm.export.ort_fuse import attention_spec, fuse_decoder

        model = onnx.load(str(art / "decoder.onnx"))
        if lower:
            lower_phm(model)
        if lean and not any(n.op_type == "DequantizeLinear" for n in model.graph.node):
            lean_graph(model)
        if fuse:
            fuse_decoder(model, _attention_spec(art, attention_spec))
        atomic_write_bytes(path, model.SerializeToString())
    return path


def _attention_spec(art: Path, attention_spec):
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(art / "hf")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return attention_spec(model, json.loads((art / "manifest.json").read_text())["memory_plan"]["context"])


def _genai_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime_genai") is not None and importlib.util.find_spec("onnx_ir") is not None


def _genai_version() -> str | None:
    if not _genai_installed():
        return None
    import onnxruntime_genai

    return onnxruntime_genai.__version__


def measure(runs: dict, ids: np.ndarray, threads: int, args, console, params: dict) -> list[dict]:
    """Interleaved rounds of every variant at one thread count -> one row per variant."""
    from phm.runtime.ort_backend import OrtBackend

    graphs = {name: run / "model.onnx" if isinstance(run, Path) else variant_graph(*run) for name, run in runs.items()}
    def backend(name, run):
        if isinstance(run, Path):
            return GenaiRunner(run, threads)
        if all(run[1:]):  # the artifacts as phm-run opens them (manifest: KV buffer, INT4 accuracy level)
            return OrtBackend.from_artifacts(run[0], providers=["CPUExecutionProvider"], threads=threads)
        return OrtBackend(graphs[name], providers=["CPUExecutionProvider"], threads=threads)

    backends = {name: backend(name, run) for name, run in runs.items()}
    nodes = {name: optimized_nodes(path, threads) for name, path in graphs.items()}
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
    for col in ("variant", "params (M)", "nodes", "decode tok/s", "min–max", "× dense (q1–q3)", "× GenAI",
                "prefill ms", "min–max", "× dense"):
        table.add_column(col, justify="right")
    rows = []
    for n in names:
        d, p = samples[n]["decode_tok_s"], samples[n]["prefill_ms"]
        # Paired per round (the variants of a round ran back to back under about the same load):
        # median of the per-round ratios, and their quartiles as the noise figure.
        # plain rows: ratio to the plain dense graph; int4 rows: to dense int4 (what PHM stacks with)
        ref = next((f"dense {s}" for s in ("plain", "traced", "int4", "int4a4", "int4a4h") if n.endswith(f" {s}")),
                   "dense")
        ref = "dense" if n.startswith("genai") else ref
        paired = [x / y for x, y in zip(d, samples[ref]["decode_tok_s"])]
        genai = {"dense": "genai fp32", **{f"{m} {q}": "genai int4" for m in ("dense", "phm B=2")
                                           for q in ("int4", "int4a4", "int4a4h")}}.get(n)
        vs_genai = None
        if genai in samples:  # our decode against GenAI's, paired per round
            ratios = [x / y for x, y in zip(d, samples[genai]["decode_tok_s"])]
            vs_genai = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        q1, dec_ratio, q3 = statistics.quantiles(paired, n=4) if len(paired) > 1 else [paired[0]] * 3
        pre_ratio = statistics.median(y / x for x, y in zip(p, samples[ref]["prefill_ms"]))  # > 1: faster
        rows.append({"threads": threads, "variant": n, "params": params[n], "decode_tok_s": med[n]["decode_tok_s"],
                     "decode_tok_s_all": d, "decode_speedup": dec_ratio, "decode_speedup_q1_q3": [q1, q3],
                     "decode_speedup_all": paired, "prefill_ms": med[n]["prefill_ms"], "prefill_ms_all": p,
                     "prefill_speedup": pre_ratio, "nodes": nodes[n],
                     **({"vs_genai": vs_genai} if vs_genai is not None else {})})
        table.add_row(n, f"{params[n] / 1e6:.1f}", str(nodes[n]), f"{med[n]['decode_tok_s']:.1f}",
                      f"{min(d):.1f}–{max(d):.1f}", f"{dec_ratio:.2f} ({q1:.2f}–{q3:.2f})",
                      "" if vs_genai is None else f"{vs_genai[1]:.2f} ({vs_genai[0]:.2f}–{vs_genai[2]:.2f})",
                      f"{med[n]['prefill_ms']:.0f}",
                      f"{min(p):.0f}–{max(p):.0f}", f"{pre_ratio:.2f}")
    console.print(table)
    return rows


if __name__ == "__main__":
    main()
