"""The --int8 / --int4 stage of `export_model`: calibration feeds, quantizing one graph, the accuracy report.

    stage = QuantStage(source, model_dir, config, on_stage)  # loads calibration data + tokenizer once
    summary = stage.quantize(spec, graph)                    # rewritten float graph → INT8 or INT4, in place
    stage.report(tmp, graphs, params, int8_bytes, "PHM")     # report.md/.json/.png of the staged graphs

Text becomes token ids through the model dir's tokenizer; a model dir without one (the tiny test
models) gets the UTF-8 bytes of the text modulo the vocabulary, with a warning. Calibration runs the
PyTorch model (`source.streaming()`: weights read module by module from the checkpoint) on the
calibration prompts, at most CALIB_TOKENS tokens each, and captures the rows every W8A8 linear reads
(capture.py) until MAX_ROWS tokens; each tensor's scale is chosen as soon as its rows are in. --int4
(quantize_int4.py) needs calibration rows only for `--int4-method awq` (the same capture, of the
inputs of the INT4 linears).

The report compares, on held-out real text (the held-out split of the chatterbot corpus, which the
calibration prompts are not part of), FP32 = the PyTorch model, FP16 = the same model at fp16
(PyTorch, CPU; both streamed from the checkpoint), INT8 (or INT4) = the exported ONNX graph in ONNX Runtime
(CPU, basic graph optimizations: see `quantize.ort_options`), all against FP32's logits:
logit cosine, top-1 agreement and perplexity of the real next tokens (a VLM decoder gets the text's
embeddings). A VLM's report adds the answer agreement on image+prompt pairs (`--report-data`, else
the calibration data's images; vlm_answers.py). An encoder's report compares token hidden states and
mean-pooled sentence embeddings on held-out sentences instead (report.encoder_metrics). A PHM
checkpoint that names its dense teacher (phm_config.json "teacher", written by the trainer) gets the
teacher's FP32 row first, measured against the student's FP32 on the same text: a student's
perplexity is read against its teacher's.
With `Int8Config(activations=False)` every linear is INT8 weight-only and the INT8 row is labelled "int8-wo".
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs
import torch

from phm.trainer.checkpoint import read_phm_config
from phm.trainer.data import read_samples
from phm.trt_plugins import spec as phm_spec

from . import io_names as io
from .calib_data import load_calibration_data
from .capture import capture, match_modules, match_phm_modules
from .graphs import MROPE_TYPES, VLM_TYPES, GraphSpec, cache_geometry, text_config
from .precision import tensor_types
from .quantize import MAX_ROWS, Int8Plan, _loaded, choose_scale, input_weights, log_scales, ort_options, plan_int8, quantize_graph
from .quantize_int4 import (block_group, down_key, down_scalable, phm_group, phm_input_cores, phm_input_firsts,
                            plan_int4, quantize_graph_int4)
from .reference import attach_functions
from .rewrite import const_value
from .report import ReportRow, encoder_metrics, metrics, write_report
from .source import ModelSource

log = logging.getLogger(__name__)

__all__ = ["CALIB_TOKENS", "QuantStage", "heldout_sentences", "heldout_windows", "text_to_ids"]

CALIB_TOKENS = 128   # tokens per calibration prompt (longer ones are cut)
WINDOW = 128         # tokens per held-out evaluation window

_TEACHER_NOTE = ("The teacher (dense) row is the dense model the checkpoint was made from (phm_config.json "
                 "\"teacher\"), FP32 PyTorch on the same text: its cosine and top-1 agreement are against the "
                 "student's FP32, its perplexity is its own.")


def _tokenizer(model_dir: Path):
    import transformers

    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None  # AutoTokenizer would build an empty one from config.json alone
    try:
        return transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def text_to_ids(text: str, tokenizer, vocab: int) -> list[int]:
    """Token ids of `text`: the tokenizer's, or UTF-8 bytes mod `vocab` when there is none."""
    if tokenizer is not None:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return [b % vocab for b in text.encode("utf-8")]


def _heldout_texts() -> list[str]:
    """The chatterbot utterances of the trainer's held-out split: text no student trained on."""
    from phm.trainer.data import chatterbot_texts, split_holdout

    return split_holdout(chatterbot_texts())[1]


def heldout_windows(tokenizer, vocab: int, tokens: int, window: int = WINDOW) -> list[np.ndarray]:
    """Windows (1, ≤ window) of held-out real text, `tokens` ids in all (fewer if the text runs out)."""
    from phm.trainer.data import token_windows

    ids = text_to_ids("\n".join(_heldout_texts()), tokenizer, vocab)[:tokens]
    if len(ids) < 2:
        raise ValueError("the held-out text gave fewer than 2 tokens")
    return [np.array([w], dtype=np.int64) for w in token_windows(ids, window)]


def heldout_sentences(tokenizer, vocab: int, tokens: int, window: int = WINDOW) -> list[np.ndarray]:
    """Held-out sentences (1, ≤ window) one each, with the tokenizer's special tokens (as sentence encoders
    read them), until `tokens` ids are reached; one-token sentences are skipped."""
    sentences, total = [], 0
    for text in _heldout_texts():
        if total >= tokens:
            break
        ids = (list(tokenizer(text)["input_ids"]) if tokenizer is not None else text_to_ids(text, None, vocab))[:window]
        if len(ids) > 1:
            sentences.append(np.array([ids], np.int64))
            total += len(ids)
    return sentences


def _int4_phm_nodes(graph: gs.Graph, group: int) -> list[gs.Node]:
    """The PHM nodes of `graph` that INT4 quantizes (a group size divides their input dimensions)."""
    return [n for n in graph.nodes if n.domain == phm_spec.DOMAIN and n.op in phm_spec.OPS
            and phm_group(n, group) is not None]


class QuantStage:
    """Everything --int8 / --int4 needs that does not change per graph (calibration data, tokenizer)."""

    def __init__(self, source, model_dir: Path, config, on_stage: Callable[[str], None]):
        self.source, self.model = source, source.model  # the exporter's ModelSource (source.py)
        self.model_dir, self.config, self.stage = model_dir, config, on_stage
        self.quant = config.quant                # the Int8Config or Int4Config
        self.label = config.precision.upper()    # "INT8" | "INT4"
        self.int4_accuracy = config.int4.accuracy if config.int4 else 1  # how the report runs MatMulNBits
        self.samples = load_calibration_data(self.quant.calib_data)  # ValueError on empty/invalid data
        self.processor = None  # the VLM's image processor, loaded once by _answer_samples when answers are asked
        self.answer_samples = self._answer_samples()
        self.tokenizer = _tokenizer(model_dir)
        self.vocab = text_config(self.model).vocab_size
        if self.tokenizer is None:
            log.warning("%s has no tokenizer: calibration and the report use UTF-8 bytes mod vocab as token ids",
                        model_dir)
        if any(s.image is not None for s in self.samples):
            log.warning("calibration images are not used: the vision graph's attention is weight-only INT8")
        self.ids = [ids[:CALIB_TOKENS] for ids in (text_to_ids(s.text, self.tokenizer, self.vocab)
                                                   for s in self.samples) if ids]
        if not self.ids:
            raise ValueError("calibration data has no text to tokenize")

    def _answer_samples(self) -> list:
        """The VLM report's image+prompt pairs: --report-data, else the calibration samples with images."""
        from phm.runtime.vlm import image_processor

        vlm = self.model.config.model_type in VLM_TYPES
        if self.quant.report_data is None:
            samples = [s for s in self.samples if s.image is not None] if vlm else []
            try:
                if samples:
                    self.processor = image_processor(self.model_dir)
            except ValueError as e:  # the answers are optional here: the report goes on without them
                log.warning("%s report: no answer agreement on the calibration images: %s", self.label, e)
                return []
            return samples
        if not vlm:
            raise ValueError(f"--report-data holds image+prompt pairs for VLM exports; "
                             f"{self.model.config.model_type} has no vision tower")
        samples = [s for s in read_samples(self.quant.report_data, captions_required=False, what="report data")
                   if s.image is not None]
        if not samples:
            raise ValueError(f"report data {self.quant.report_data} holds no image")
        self.processor = image_processor(self.model_dir)  # asked for explicitly: missing is an error before any work
        return samples

    # -- feeds --------------------------------------------------------------------------------
    def _feed(self, kind: str, first_input: str, ids: np.ndarray, float_np) -> dict:
        """One prefill feed of a `kind` graph whose first input is `first_input`, for token ids (1, T)."""
        t = ids.shape[1]
        if kind == "encoder":
            return {io.INPUT_IDS: ids, io.ATTENTION_MASK: np.ones_like(ids)}
        layers, kv_heads, head_dim = cache_geometry(self.model)
        feed = {io.ATTENTION_MASK: np.ones((1, t), np.int64)}
        pos = np.arange(t, dtype=np.int64)[None]
        if first_input == io.INPUTS_EMBEDS:  # VLM decoder: text embeddings; Qwen: M-RoPE positions (3, 1, T)
            with torch.no_grad():
                emb = self.model.get_input_embeddings()(torch.from_numpy(ids)).float().numpy()
            feed[io.INPUTS_EMBEDS] = emb.astype(float_np)
            if self.model.config.model_type in MROPE_TYPES:  # LLaVA's decoder takes plain (1, T) positions
                pos = np.broadcast_to(pos[None], (3, 1, t)).copy()
        else:
            feed[io.INPUT_IDS] = ids
        feed[io.POSITION_IDS] = pos
        for name in io.past_names(layers):
            feed[name] = np.zeros((1, kv_heads, 0, head_dim), float_np)
        return feed

    # -- quantization -------------------------------------------------------------------------
    def quantize(self, spec: GraphSpec, graph: gs.Graph) -> dict:
        """Quantize one rewritten float graph in place (quantize.py, quantize_int4.py), calibrated on the
        prompts; its summary."""
        if self.config.int4:
            return self._quantize_int4(spec, graph)
        plan = plan_int8(graph, lm_head=self.config.int8.lm_head)
        if spec.kind in ("vision", "embed") or not self.config.int8.activations:  # weights only (module doc)
            for lin in plan.linears:
                if lin.mode == "w8a8":
                    lin.mode = "weight_only"
        types = tensor_types(attach_functions(gs.export_onnx(graph)))
        scales, prompts = self._calibrate(spec, plan) if plan.activation_tensors else ({}, 0)
        summary = quantize_graph(graph, plan, scales, types)
        summary["calib_method"] = self.config.int8.calib_method
        summary["calib_prompts"] = prompts
        return summary

    def _quantize_int4(self, spec: GraphSpec, graph: gs.Graph) -> dict:
        """--int4: every dense linear (and PHM node) of the graph INT4 weight-only, in place; its summary."""
        int4 = self.config.int4
        plan = plan_int4(graph, lm_head=int4.lm_head)
        types = tensor_types(attach_functions(gs.export_onnx(graph)))
        # AWQ and GPTQ need the graph's inputs from the text prompts: a vision graph keeps round-to-nearest
        method = int4.method if spec.kind not in ("vision", "embed") else "rtn"
        smooth, rounded, prompts = {}, None, 0
        if method == "awq":
            smooth, prompts = self._awq(spec, graph, plan)
        elif method == "gptq":
            rounded, prompts = self._gptq(spec, graph, plan)
        summary = quantize_graph_int4(graph, plan, types, int4.group, smooth, rounded)
        summary.update(method=method, calib_prompts=prompts)
        if rounded is not None:
            summary["gptq_rounded"] = len(rounded)
        return summary

    def _gptq(self, spec: GraphSpec, graph: gs.Graph, plan: Int8Plan) -> tuple[object, int]:
        """GPTQ's codes and scales (gptq.py) of every INT4 linear and every PHM node's cores, from the rows
        the PyTorch model's modules read on the calibration prompts (capture.py), in a RoundingStore
        keyed as quantize_graph_int4 reads it; and how many prompts ran."""
        from .gptq import MAX_ROWS as GPTQ_ROWS, RoundingStore, gptq_dense, gptq_phm

        group = self.config.int4.group
        # PHM inputs: name → (node, [(first, cores)]): x read by gate/up (or the PHMLinear), h by down
        phm = {}
        for n in _int4_phm_nodes(graph, group):
            firsts = phm_input_firsts(n)
            if firsts:
                phm[n.inputs[0].name] = (n, [(f, const_value(n.inputs[f])) for f in firsts])
            if n.op == phm_spec.PHM_FFN.op_type:
                phm[down_key(n)] = (n, [(phm_spec.DOWN_CORES, const_value(n.inputs[phm_spec.DOWN_CORES]))])
        store, errors = RoundingStore(), []

        def done(name: str, rows: np.ndarray) -> None:
            if name in phm:
                node, pairs = phm[name]
                parts, res = gptq_phm(rows, [np.asarray(_loaded(c), np.float32) for _, c in pairs],
                                      node.attrs["bases"], phm_group(node, group))
                for (first, _), (q, scales) in zip(pairs, parts):
                    store.put((node.name, first), q, scales)
            else:
                w = input_weights(plan, name)
                g = block_group(w.shape[0], group)
                if g is None:  # quantize_graph_int4 keeps it float (and says so)
                    return
                res = gptq_dense(rows, w, g)
                start = 0
                for lin in plan.readers(name):
                    width = lin.weight.shape[lin.channel_axis]
                    store.put(lin.node.name, res.q[:, start:start + width], res.scales[:, start:start + width])
                    start += width
            errors.append((res.rtn_error, res.error))

        prompts = self._int4_capture(spec, plan, {name: pairs[0][1] for name, (_, pairs) in phm.items()}, GPTQ_ROWS,
                                     done, "GPTQ", lm_head=self.config.int4.lm_head)
        if errors:
            log.info("GPTQ: %d inputs, output error on calibration rows: round-to-nearest %.4f → %.4f (mean)",
                     len(errors), float(np.mean([e[0] for e in errors])), float(np.mean([e[1] for e in errors])))
        return store, prompts

    def _awq(self, spec: GraphSpec, graph: gs.Graph, plan: Int8Plan) -> tuple[dict, int]:
        """AWQ channel scales (awq.py) of every INT4 linear's input and every PHM node's, from the rows the
        PyTorch model's modules read on the calibration prompts (capture.py); and how many prompts ran."""
        from .awq import MAX_ROWS as AWQ_ROWS, dense_scale, phm_scale

        group = self.config.int4.group
        # the PHM inputs to scale: name → (node, the cores that read it); a swiglu PHMFFN's down input too
        phm = {}
        for n in _int4_phm_nodes(graph, group):
            if phm_input_cores(n):
                phm[n.inputs[0].name] = (n, phm_input_cores(n))
            if down_scalable(n):
                phm[down_key(n)] = (n, [const_value(n.inputs[phm_spec.DOWN_CORES])])
        chosen = {}

        def done(name: str, rows: np.ndarray) -> None:
            if name in phm:
                node, cores = phm[name]
                chosen[name] = phm_scale(rows, [np.asarray(_loaded(c), np.float32) for c in cores],
                                         node.attrs["bases"], phm_group(node, group))
            else:
                chosen[name] = dense_scale(rows, input_weights(plan, name), group)

        prompts = self._int4_capture(spec, plan, {name: cores[0] for name, (_, cores) in phm.items()}, AWQ_ROWS,
                                     done, "AWQ scales")
        if chosen:
            log.info("AWQ: %d inputs, α %s, output error on calibration rows: round-to-nearest %.4f → %.4f (mean)",
                     len(chosen), sorted({a.alpha for a in chosen.values()}),
                     float(np.mean([a.rtn_error for a in chosen.values()])),
                     float(np.mean([a.error for a in chosen.values()])))
        return {name: a.s for name, a in chosen.items() if a.alpha > 0}, prompts

    def _int4_capture(self, spec: GraphSpec, plan: Int8Plan, phm_cores: dict, rows: int,
                      done: Callable[[str, np.ndarray], None], what: str, lm_head: bool = False) -> int:
        """Hand `done` the rows that every INT4 linear's input, and every PHM input in `phm_cores` (name →
        the first cores reading it, which find its module), reads on the calibration prompts (capture.py),
        with a stage message per input; how many prompts ran. AWQ and GPTQ calibrate through it."""
        plan.calibrated = ("w4",)
        try:
            targets = match_modules(plan, self.model, self.source)
            targets.update(match_phm_modules(phm_cores, self.model, self.source))
        except ValueError as e:
            raise ValueError(f"{spec.kind} graph: {e}") from None
        handed = []

        def each(name: str, x: np.ndarray) -> None:
            handed.append(name)
            self.stage(f"{what} of the {spec.kind} graph: {len(handed)}/{len(targets)}")
            done(name, x)

        def progress(done_batches: int, batches: int) -> None:
            self.stage(f"calibrating {spec.kind} for {what.split()[0]}: batch {done_batches}/{batches}")

        with self.source.streaming() as model:
            return capture(model, targets, self.ids, rows, each, lm_head=lm_head, progress=progress)

    def _calibrate(self, spec: GraphSpec, plan: Int8Plan) -> tuple[dict, int]:
        """ActScale per W8A8 input of the graph, from the PyTorch model's rows (capture.py); and how
        many calibration prompts were run."""
        int8 = self.config.int8
        names = plan.activation_tensors
        try:
            targets = match_modules(plan, self.model, self.source)
        except ValueError as e:
            raise ValueError(f"{spec.kind} graph: {e}") from None
        scales = {}

        def done(name: str, rows: np.ndarray) -> None:
            self.stage(f"choosing {spec.kind} activation scales ({self._recipe()}): {len(scales) + 1}/{len(names)}")
            scales[name] = choose_scale(rows, input_weights(plan, name), int8.calib_method, int8.smoothing, int8.rotate)

        def progress(done_batches: int, batches: int) -> None:
            self.stage(f"calibrating {spec.kind}: batch {done_batches}/{batches}")

        with self.source.streaming() as model:
            prompts = capture(model, targets, self.ids, MAX_ROWS, done, lm_head=int8.lm_head, progress=progress)
        log_scales(scales)
        return scales, prompts

    def _recipe(self) -> str:
        """How the W8A8 inputs were calibrated, in words (stage messages and the report's note)."""
        if self.config.int4:
            return (f"INT4 weight-only, group {self.quant.group}, "
                    + {"awq": "AWQ channel scales", "gptq": "GPTQ rounding"}.get(self.quant.method, "round to nearest"))
        if not self.config.int8.activations:
            return "weights only (no activation quantization)"
        parts = [f"calibrator {self.config.int8.calib_method}"]
        if self.config.int8.rotate:
            parts.append("inputs rotated")
        if self.config.int8.smoothing:
            parts.append("SmoothQuant α searched")
        return ", ".join(parts)

    # -- accuracy report ----------------------------------------------------------------------
    def report(self, art_dir: Path, graphs: dict, params: int, int8_bytes: int, name: str) -> Path:
        """report.md/.json/.png of FP32/FP16/INT8 of the decoder graph in the staging dir `art_dir`
        (`graphs`: the manifest's graph entries so far); for a VLM also the answer agreement on
        image+prompt pairs (vlm_answers.py)."""
        import onnxruntime as ort

        if "decoder" not in graphs:
            return self._encoder_report(art_dir, graphs["encoder"], params, int8_bytes, name)
        self.stage(f"accuracy report: FP32 / FP16 (PyTorch) and {self.label} (ONNX Runtime) on held-out text")
        decoder = graphs["decoder"]
        first_input = decoder["io"]["inputs"][0]["name"]
        windows = heldout_windows(self.tokenizer, self.vocab, self.quant.report_tokens)
        logits = lambda model: np.concatenate(  # noqa: E731 - the same forward for student and teacher
            [model(input_ids=torch.from_numpy(ids)).logits[0, :-1].float().numpy() for ids in windows])
        torch_logits = self._torch_runs(logits)
        float_np = np.float16 if self.config.fp16 else np.float32
        with self.source.streaming():  # a VLM decoder's feeds are the text's embeddings
            feeds = [self._feed("decoder", first_input, ids, float_np) for ids in windows]
        sess = ort.InferenceSession(str(art_dir / decoder["ort_file"]), ort_options(self.int4_accuracy), providers=["CPUExecutionProvider"])
        int8 = np.concatenate([sess.run([io.LOGITS], feed)[0][0, :-1].astype(np.float32) for feed in feeds])
        del sess
        ref, half, labels = torch_logits["fp32"], torch_logits["fp16"], np.concatenate([ids[0, 1:] for ids in windows])
        rows = self._rows(name, [metrics(ref, v, labels) for v in (ref, half, int8)], params, int8_bytes)
        teacher = self._teacher_row(logits, lambda t: metrics(ref, t, labels))
        twice = "; a VLM keeps the table in embed.onnx and the head in decoder.onnx, so a tied one twice"
        note = (f"{len(labels)} held-out next-token positions (chatterbot corpus, held-out split) in windows of "
                f"≤ {WINDOW} tokens. FP32 and FP16: the PyTorch model (FP16: its weights at fp16, CPU); {self.label}: "
                f"{decoder['ort_file']} in ONNX Runtime (CPU), activations {self.config.activations}, "
                f"{self._recipe()}. Metrics against FP32's logits. Sizes: FP32/FP16 = "
                f"parameters × 4/2 bytes; {self.label} = the exported graph files (a float LM head and embedding table "
                f"included{twice if 'vision' in graphs else ''}).")
        if "vision" in graphs:
            rows, answers_note = self._answers(art_dir, graphs, rows)
            note += "\n\n" + answers_note
        if teacher:
            rows, note = teacher + rows, f"{note}\n\n{_TEACHER_NOTE}"
        for r in rows:
            log.info("%s %s: cosine %.4f, top-1 %.2f%%, ppl %.3f", r.model, r.precision, r.metrics.logit_cosine,
                     100 * r.metrics.top1_agreement, r.metrics.perplexity)
        return write_report(rows, art_dir, title=f"{self.label} accuracy report: {name}", note=note)

    def _torch_runs(self, fn: Callable) -> dict[str, list]:
        """{"fp32": fn(model), "fp16": fn(model at fp16)}: the PyTorch model streamed from the checkpoint
        (source.py), one precision after the other."""
        out = {}
        for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
            with self.source.streaming(dtype) as model, torch.no_grad():
                out[name] = fn(model)
        return out

    def _teacher(self) -> ModelSource | None:
        """The dense teacher the checkpoint names, streamed from its files; None (warned) when it
        names none or the dir cannot be read (the report goes on without the row)."""
        doc = read_phm_config(self.model_dir)
        path = (doc or {}).get("teacher")
        if not path:
            return None
        try:
            return ModelSource.from_files(Path(path))
        except (OSError, ValueError) as e:
            log.warning("%s report: no teacher row: %s (named by phm_config.json) cannot be read: %s", self.label, path, e)
            return None

    def _teacher_row(self, fn: Callable, score: Callable) -> list[ReportRow]:
        """[the teacher's FP32 row] (score(its outputs)), or [] without a readable teacher."""
        teacher = self._teacher()
        if teacher is None:
            return []
        self.stage("accuracy report: the dense teacher (FP32, PyTorch)")
        with teacher.streaming() as model, torch.no_grad():
            outputs = fn(model)
        params = sum(p.numel() for p in teacher.model.parameters())
        return [ReportRow("teacher (dense)", "fp32", score(outputs), params * 4)]

    def _rows(self, name: str, fp32_fp16_int8: list, params: int, int8_bytes: int) -> list[ReportRow]:
        """The three report rows of one model from its FP32, FP16 and INT8 metrics (in that order)."""
        labels = ("fp32", "fp16", "int4" if self.config.int4 else "int8" if self.quant.activations else "int8-wo")
        sizes = (params * 4, params * 2, int8_bytes)
        return [ReportRow(name, p, m, size) for p, m, size in zip(labels, fp32_fp16_int8, sizes)]

    def _encoder_report(self, art_dir: Path, encoder: dict, params: int, int8_bytes: int, name: str) -> Path:
        """An encoder's report: held-out sentences (with the tokenizer's special tokens, as sentence
        encoders read them), one at a time; cosine of the token hidden states and of the mean-pooled
        sentence embeddings to FP32's."""
        import onnxruntime as ort

        self.stage(f"accuracy report: FP32 / FP16 (PyTorch) and {self.label} (ONNX Runtime) on held-out sentences")
        sentences = heldout_sentences(self.tokenizer, self.vocab, self.quant.report_tokens)
        total = sum(ids.shape[1] for ids in sentences)
        hidden = lambda model: [  # noqa: E731 - the same forward for student and teacher
            model(input_ids=torch.from_numpy(ids), attention_mask=torch.ones(ids.shape, dtype=torch.int64))
            .last_hidden_state[0].float().numpy() for ids in sentences]
        outs = self._torch_runs(hidden)
        sess = ort.InferenceSession(str(art_dir / encoder["ort_file"]), ort_options(self.int4_accuracy), providers=["CPUExecutionProvider"])
        outs["int8"] = [sess.run([io.LAST_HIDDEN_STATE], self._feed("encoder", io.INPUT_IDS, ids, np.float32))[0][0]
                        .astype(np.float32) for ids in sentences]
        del sess
        rows = self._rows(name, [encoder_metrics(outs["fp32"], v) for v in outs.values()], params, int8_bytes)
        teacher = self._teacher_row(hidden, lambda t: encoder_metrics(outs["fp32"], t))
        rows = teacher + rows
        for r in rows:
            log.info("%s %s: sentence-embedding cosine %.4f, hidden-state cosine %.4f", r.model, r.precision,
                     r.metrics.embedding_cosine, r.metrics.logit_cosine)
        note = (f"{len(sentences)} held-out sentences ({total} tokens; chatterbot corpus, held-out split), one at a "
                f"time. FP32 and FP16: the PyTorch model (FP16: its weights at fp16, CPU); {self.label}: {encoder['ort_file']} in "
                f"ONNX Runtime (CPU), activations {self.config.activations}, {self._recipe()}. "
                f"Cosines to FP32's last hidden states: per token, and of the mean-pooled sentence embeddings. "
                f"Sizes: FP32/FP16 = parameters × 4/2 bytes; {self.label} = the exported graph file."
                + (f"\n\n{_TEACHER_NOTE}" if teacher else ""))
        return write_report(rows, art_dir, title=f"{self.label} accuracy report: {name}", note=note)

    def _answers(self, art_dir: Path, graphs: dict, rows: list) -> tuple[list, str]:
        """The rows with their answer agreement filled in, and the note's paragraph (the answers themselves)."""
        from .vlm_answers import ANSWER_TOKENS, answer_agreement, greedy_answers

        n = len(self.answer_samples)
        if not n:
            log.warning("%s report: no image+prompt pairs, so no answer agreement (pass --report-data)", self.label)
            return rows, ("Answer agreement: not measured (no usable image+prompt pairs in the calibration data, "
                          "or no image processor in the model dir; pass --report-data).")
        done = [0]

        def tick():
            done[0] += 1
            self.stage(f"accuracy report: greedy answers to image prompts {done[0]}/{3 * n} (FP32, FP16, {self.label})")

        answers = greedy_answers(self.source, self.model_dir, art_dir, graphs, self.answer_samples,
                                 self.tokenizer, self.vocab, on_sample=tick, processor=self.processor,
                                 int4_accuracy=self.int4_accuracy)
        precision = {"fp32": "fp32", "fp16": "fp16", "int8": rows[-1].precision}
        by_precision = {precision[k]: answer_agreement(answers["fp32"], v) for k, v in answers.items()}
        rows = [replace(r, metrics=replace(r.metrics, answer_agreement=by_precision[r.precision])) for r in rows]
        decode = ((lambda t: self.tokenizer.decode(t, skip_special_tokens=True).strip().replace("|", "\\|"))
                  if self.tokenizer is not None else str)
        lines = [f"Answer agreement: greedy answers (≤ {ANSWER_TOKENS} tokens) to {n} image+prompt pairs "
                 f"({'--report-data' if self.quant.report_data else 'the calibration images'}) equal to FP32's "
                 f"token for token; FP32/FP16 run the PyTorch model, {self.label} the exported vision, embed and decoder "
                 "graphs in ONNX Runtime (as phm-run runs them).", "",
                 f"| # | FP32 answer | {self.label} answer | same |", "|---:|---|---|---|"]
        for i, (a, b) in enumerate(zip(answers["fp32"][:8], answers["int8"][:8])):
            lines.append(f"| {i} | {decode(a)} | {decode(b)} | {'yes' if a == b else 'no'} |")
        return rows, "\n".join(lines)
