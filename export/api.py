"""`export_model(model_dir, config, out_dir) -> Path`: checkpoint dir → artifacts dir.

    out/
      <kind>.onnx          ONNX Runtime file: PHM nodes + their reference functions (kind: decoder,
                           encoder, vision, embed — whatever the architecture has)
      <kind>.ort.onnx      what ONNX Runtime (phm-run) runs: PHM nodes lowered, shape arithmetic folded
                           (ort_graph.py; absent where that changes nothing)
      <kind>.trt.onnx      TensorRT file: the same graph without model.functions
      <kind>.onnx.data     external initializers of all three, one copy each, when the graph is large
      <kind>.inputs.json   Polygraphy inputs (decoder: prefill + one decode step)
      <kind>.ref.json      Polygraphy RunResults of the PyTorch model on those inputs
      manifest.json        versions, I/O contract, precision, memory plan for the target, PHM layers,
                           MLP report, sizes, hashes, commands
      commands.sh          trtexec / polygraphy commands for the target
      export_config.json   the ExportConfig used
      hf/                  config, tokenizer, phm_config.json … of the model dir (what a runtime needs)
      engines/             TensorRT engines, only where `import tensorrt` works
      report.md/.json/.png --int8/--int4: FP32/FP16/quantized accuracy on held-out text (int8.py)

Everything is assembled in a temporary sibling dir and renamed into place at the end, so a failed
export leaves nothing behind. The same input gives byte-identical ONNX files.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from tqdm import tqdm

from phm.trainer import PHMLinear, load, read_phm_config
from phm.trainer.arch import find_mlp_blocks
from phm.common.fsutil import atomic_dir, atomic_write_bytes, atomic_write_text, check_apart, output_lock

from . import engine as trt_engine
from . import manifest as mf
from . import tolerance as tol
from .bind import bind_weights, streamed_weights
from .config import ExportConfig
from .graphs import export_graph, graph_specs, text_config
from .memory_plan import MemoryPlan, ModelFootprint, plan_memory
from .ort_fuse import attention_spec
from .ort_graph import ORT_SUFFIX, ort_graph
from .pixels import patch_range, pixel_range
from .precision import tensor_types, upcast_softmax
from .quantize_int4 import finish_int4
from .reference import attach_functions, strip_functions
from .refs import feed_arrays, inputs_json, reference_feeds, run_results_json, run_torch
from .rewrite import fuse_phm_ffn, fuse_phm_linear, phm_units, share_tied_weights
from .source import ModelSource
from .verify import mlp_report, not_rewritten
from .weights import ArrayTensor, DataFile, StreamedWeight

log = logging.getLogger(__name__)

__all__ = ["ExportError", "build_manifest", "export_model", "memory_plan_for"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".index.json")


class ExportError(ValueError):
    """A known reason an export cannot be done (the CLI prints it in one line)."""


def _merge_lora(model, model_dir: Path):
    """Merge a peft LoRA adapter shipped in the model dir (the trainer merges before saving).

    transformers loads an adapter_config.json next to the weights by itself (its peft
    integration); otherwise (PHM checkpoints are built, not from_pretrained) peft loads it.
    """
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    if getattr(model, "_hf_peft_config_loaded", False):
        from peft.tuners.tuners_utils import BaseTunerLayer

        merged = 0
        for name, module in list(model.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge()
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, module.get_base_layer())
                merged += 1
        model._hf_peft_config_loaded = False
        log.info("merged %d LoRA layers into their base weights", merged)
        return model
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(model_dir)).merge_and_unload()
    return model


def param_counts(model: torch.nn.Module, bits: int) -> dict:
    """Parameters and weight bytes of the model as exported and of its dense twin."""
    after = sum(p.numel() for p in model.parameters())
    phm = [m.cost for m in model.modules() if isinstance(m, PHMLinear)]
    mlp_after = sum(c.params for c in phm)
    mlp_before = sum(c.dense_params for c in phm)
    before = after - mlp_after + mlp_before
    return {"params_before": before, "params_after": after, "phm_params": mlp_after,
            "phm_dense_params": mlp_before, "weight_bytes_before": before * bits // 8,
            "weight_bytes_after": after * bits // 8, "param_ratio": after / before}


def _save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Serialise atomically (initializers may already point at an external data file)."""
    atomic_write_bytes(path, model.SerializeToString(deterministic=True))


DATA_FILE = "model.onnx.data"  # the external data of every graph of an export: each weight stored once


def _materialize(graph: gs.Graph) -> gs.Graph:
    """Every streamed weight loaded (a graph small enough to inline)."""
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and isinstance(t._values, StreamedWeight):
            t.values = t._values.load()
    return graph


def _store_weights(graph: gs.Graph, data: DataFile, external: bool) -> bool:
    """Put the graph's weights where they will live: inline, or every initializer over 1 KiB in the
    export's shared data file (streamed weights block by block, in-memory ones as they are). Returns
    whether the graph uses the data file."""
    if not external:
        _materialize(graph)
        return False
    for t in [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]:
        if not isinstance(t._values, StreamedWeight) and t.values.nbytes > 1024:
            t.values = StreamedWeight(ArrayTensor(np.ascontiguousarray(t.values)))
    weights = streamed_weights(graph)
    with tqdm(total=data.new_bytes(weights), unit="B", unit_scale=True, desc=f"writing {graph.name} weights",
              disable=None, leave=False) as bar:
        data.add(weights, progress=lambda w: bar.update(w.nbytes))
    return True


def _rewrite(kind: str, graph: gs.Graph, blocks, layers, towers, strict: bool, fp16: bool):
    linears = fuse_phm_linear(graph)
    ffns = fuse_phm_ffn(graph)
    share_tied_weights(graph)
    if fp16:
        upcast_softmax(graph, tensor_types(attach_functions(gs.export_onnx(graph))))
    units = phm_units(graph)
    report = mlp_report(kind, units, blocks, layers, towers)
    bad = not_rewritten(report)
    done = sum(s.rewritten for s in report)
    log.info("%s: %d PHM projections, %d fused into PHMFFN; MLPs rewritten %d/%d (%d configured)",
             kind, linears, ffns, done, len(report), sum(s.configured for s in report))
    for s in report:
        log.info("  %-45s %-14s %s", s.block, s.status, s.detail)
    if strict and bad:
        raise ExportError(f"--strict: {len(bad)} MLP(s) of the {kind} graph not rewritten: "
                          + "; ".join(f"{s.block} ({s.status}: {s.detail})" for s in bad))
    graph.name = kind
    return graph, report


def _to_onnx(graph: gs.Graph) -> onnx.ModelProto:
    out = gs.export_onnx(graph)
    out.producer_name, out.producer_version = "phm-edge", mf.versions()["phm-edge"] or ""
    return out


def _tolerances(config: ExportConfig, outputs: list, graph: Path, feeds: list, float_np) -> dict:
    """The polygraphy bounds of one graph (tolerance.py): per output, from its magnitude; INT8 from the
    median error of the ONNX Runtime graph on the reference inputs, measured here."""
    if not config.quant:
        return {"check": "elemwise", **{b: tol.float_tolerances(outputs, config.precision, b)
                                        for b in ("onnxrt", "trt")}}
    import onnxruntime as ort

    # ONNX Runtime's default options: what `polygraphy run --onnxrt` in commands.sh uses (only quieter:
    # its warnings about fp16 nodes the CPU provider cannot constant-fold are noise in an export)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got = [dict(zip(names, sess.run(names, feed_arrays(feed, float_np)))) for feed in feeds]
    measured = tol.measured_median_errors(got, outputs)
    bounds = tol.int8_tolerances(measured, outputs)
    return {"check": "median", "onnxrt": bounds, "trt": bounds, "measured_median": measured,
            "margin": tol.MARGIN}


def _check(model: onnx.ModelProto, path: Path, external: bool) -> None:
    if external:  # the checker resolves external data relative to the file
        onnx.checker.check_model(str(path))
    else:
        onnx.checker.check_model(model)


def memory_plan_for(model, config: ExportConfig) -> MemoryPlan:
    """The target's memory budget for this model (KV cache for the profile's longest context), made
    before anything is traced: ExportError with the numbers when it cannot fit, a warning near the limit."""
    max_positions = getattr(text_config(model), "max_position_embeddings", None) or config.max_sequence
    plan = plan_memory(ModelFootprint.from_model(model), config.precision, config.target,
                       context=min(config.max_sequence, max_positions), batch=config.max_batch,
                       device_gib=config.device_gib)
    if plan.verdict == "does-not-fit":
        raise ExportError(f"--target {config.target}: {plan.refusal()}")
    if plan.verdict == "near-limit":
        log.warning("--target %s: near the memory limit: %s", config.target, plan.summary())
    else:
        log.info("memory plan: %s", plan.summary())
    return plan


def _quant_stage(source: ModelSource, model_dir: Path, config: ExportConfig, stage):
    from .int8 import QuantStage

    try:
        return QuantStage(source, model_dir, config, stage)
    except ValueError as e:  # empty/invalid calibration data: one line, before anything is written
        raise ExportError(f"--{config.precision}: {e}") from None


def _quant_report(quant, tmp: Path, graphs: dict, doc, counts: dict) -> str:
    """report.md of the decoder graph (int8.py; a VLM's also scores its answers to image prompts), or
    of the encoder graph."""
    files = {f for g in graphs.values() for f in (g["trt_file"], g["external_data"]) if f}
    size = sum((tmp / f).stat().st_size for f in files)
    name = "PHM" if doc else "dense"
    return quant.report(tmp, graphs, counts["params_after"], size, name).name


def export_model(model_dir: str | Path, config: ExportConfig, out_dir: str | Path,
                 on_stage: Callable[[str], None] | None = None) -> Path:
    """Export the checkpoint (PHM or plain HF) in `model_dir` to an artifacts dir `out_dir`.

    Before any work: `out_dir` must lie apart from every input (it is replaced as a whole with
    overwrite=True) and no other process may be writing it (held for the whole export)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_apart(out_dir, {"model dir": model_dir, **config.inputs})
    with output_lock(out_dir):
        return _export_model(model_dir, config, out_dir, on_stage)


@dataclass
class _Job:
    """What every stage of one export reads: the loaded model and what was derived from it up front."""

    model_dir: Path
    config: ExportConfig
    source: ModelSource              # the model (weights streamed from the files, or in memory)
    doc: dict | None                 # phm_config.json (None: a plain HF model dir)
    blocks: list[dict]               # the MLP blocks the architecture table finds
    counts: dict                     # parameter counts (param_counts)
    max_positions: int
    plan: MemoryPlan
    quant: object | None             # the QuantStage with --int8 or --int4
    stage: Callable[[str], None]
    data: DataFile | None = None     # the export's one external-data file, once a graph needs it
    fusions: dict = field(default_factory=dict)  # graph kind -> ort_fuse's record (None: not a decoder)

    @property
    def model(self) -> torch.nn.Module:
        return self.source.model

    @property
    def layers(self) -> list[dict]:
        return self.doc["layers"] if self.doc else []

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.config.fp16 else torch.float32

    @property
    def float_np(self):
        return np.float16 if self.config.fp16 else np.float32


def _check_request(config: ExportConfig, out_dir: Path, trt_reason: str | None) -> None:
    if config.require_engine and trt_reason:
        raise ExportError(f"--require-engine: cannot build TensorRT engines: {trt_reason}")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"output path {out_dir} exists and is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not config.overwrite:
        raise FileExistsError(f"output directory {out_dir} exists and is not empty")


def _load_job(model_dir: Path, config: ExportConfig, stage) -> tuple[_Job, list, list]:
    """Load the model and plan the export before anything is written: (job, graph specs, their fp32
    twins for the reference outputs). An architecture without an export path, a model that does not
    fit the target or bad calibration data fail here."""
    doc = read_phm_config(model_dir) if model_dir.is_dir() else None
    if (model_dir / "adapter_config.json").is_file():  # a LoRA adapter is merged into its base weights
        stage(f"loading {model_dir} (whole: LoRA adapter to merge)")
        source = ModelSource.in_memory(_merge_lora(load(model_dir), model_dir))
    else:
        stage(f"reading the structure of {model_dir} (weights stay in its files)")
        source = ModelSource.from_files(model_dir)
    model = source.model
    # Eager attention: its softmax runs in fp32 and casts back (what --fp16 must keep), and it is the
    # MatMul-Softmax-MatMul pattern TensorRT fuses; the TorchScript exporter's SDPA symbolic leaves
    # fp16 attention outputs in fp32, which breaks fp16 graphs (GPT-2, BERT).
    model.set_attn_implementation("eager")
    specs = graph_specs(model)  # an architecture without an export path fails here, before the plan
    ref_specs = graph_specs(model) if config.fp16 else specs  # fp32 twin for the reference outputs
    qwen_vision = [spec for spec in specs if spec.kind == "vision" and spec.axes]  # any grid in a pixel range
    if not qwen_vision and (config.min_pixels or config.max_pixels):
        raise ExportError("--min-pixels/--max-pixels apply to Qwen2(.5)-VL models only")
    for spec in qwen_vision:
        try:
            spec.meta.update(_image_range(model, model_dir, config))
        except ValueError as e:
            raise ExportError(str(e)) from None
    job = _Job(model_dir, config, source, doc, [asdict(b) for b in find_mlp_blocks(model)],
               param_counts(model, 16 if config.fp16 else 32),
               getattr(text_config(model), "max_position_embeddings", None) or config.max_sequence,
               memory_plan_for(model, config), None, stage)
    if config.quant:
        job.quant = _quant_stage(source, model_dir, config, stage)
    return job, specs, ref_specs


def _image_range(model, model_dir: Path, config: ExportConfig) -> dict:
    """The Qwen vision graph's manifest fields: the pixel range images are resized into and the patch
    counts of the engine's profile. Warns where the largest image's attention scores get large (the
    graph masks a patches² score matrix per head)."""
    vcfg = model.config.vision_config
    low, high = pixel_range(model_dir, config.min_pixels, config.max_pixels)
    patches = patch_range(low, high, vcfg.patch_size, vcfg.spatial_merge_size)
    score_gib = vcfg.num_heads * patches[2] ** 2 * 4 / 2 ** 30
    if score_gib > 4:
        log.warning("images up to %d pixels (%d patches) need %.0f GiB of attention scores per vision block: "
                    "pass --max-pixels to bound them", high, patches[2], score_gib)
    return {"min_pixels": low, "max_pixels": high, "patches": list(patches)}


def _trace(job: _Job, spec, tmp: Path) -> gs.Graph:
    """The graph traced on placeholders (no weight in memory), its weights bound as streamed constants."""
    job.stage(f"exporting {spec.kind} graph")
    trace_dir = tmp / f".trace-{spec.kind}"
    trace_dir.mkdir()
    spec.sample = tuple(t.to(job.dtype) if t.is_floating_point() else t for t in spec.sample)
    with job.source.tracing(job.dtype):
        export_graph(spec, trace_dir / "graph.onnx", weights=False)
    traced = onnx.load(str(trace_dir / "graph.onnx"))
    shutil.rmtree(trace_dir)
    return bind_weights(traced, spec, job.source)


def _write_graphs(job: _Job, name: str, graph: gs.Graph,
                  tmp: Path) -> tuple[Path | None, str, onnx.ModelProto]:
    """The three graphs of one kind (portable, ONNX Runtime, TensorRT) over one copy of the weights:
    (external data file or None, the ONNX Runtime file's name, the TensorRT model)."""
    if job.data is None:
        job.data = DataFile(tmp / DATA_FILE)
    # One decision for the whole export, from the model's weight bytes: every graph inline (small
    # models) or every graph on the one data file, written before the twins are made from the graph,
    # so all of them (and every other graph reading a weight) reference one copy at the same offsets.
    external = job.counts["weight_bytes_after"] > job.config.external_data_mb * (1 << 20)
    data = job.data.path if _store_weights(graph, job.data, external) else None
    rewritten = _to_onnx(graph)
    if job.config.int4:  # opset 21: blocked INT4 DequantizeLinear (quantize_int4.py)
        finish_int4(rewritten)
    ort_model, trt_model = attach_functions(rewritten), strip_functions(rewritten)
    _save_onnx(ort_model, tmp / f"{name}.onnx")
    _save_onnx(trt_model, tmp / f"{name}.trt.onnx")
    _check(ort_model, tmp / f"{name}.onnx", data is not None)
    job.stage(f"preparing the {name} graph for ONNX Runtime")
    attention = attention_spec(job.model, job.plan.context) if name == "decoder" else None
    prepared, job.fusions[name] = ort_graph(ort_model, attention, job.config.int4.accuracy if job.config.int4 else 1)
    ort_file = f"{name}.onnx"
    if prepared is not None:
        ort_file = f"{name}{ORT_SUFFIX}"
        _save_onnx(prepared, tmp / ort_file)
    return data, ort_file, trt_model


def _references(job: _Job, ref_spec, name: str, tmp: Path) -> tuple[list, list]:
    """PyTorch's outputs (fp32, the source model) on seeded inputs, written for polygraphy."""
    job.stage(f"reference outputs for {name} (PyTorch)")
    with job.source.streaming() as model:
        feeds = reference_feeds(ref_spec, model)
        outputs = run_torch(ref_spec, feeds)
    atomic_write_text(tmp / f"{name}.inputs.json", inputs_json(feeds, job.float_np))
    atomic_write_text(tmp / f"{name}.ref.json", run_results_json(outputs))
    return feeds, outputs


def _export_kind(job: _Job, spec, ref_spec, tmp: Path) -> tuple[dict, list]:
    """trace → rewrite → quantize → write (three graphs) → references → tolerances: (the manifest's
    entry for this graph, its MLP report)."""
    config, name = job.config, spec.kind
    traced = _trace(job, spec, tmp)
    job.stage(f"rewriting {name} MLPs into PHM ops")
    rewritten, report = _rewrite(name, traced, job.blocks, job.layers, spec.towers, config.strict, config.fp16)
    quant_summary = None
    if job.quant is not None:
        job.stage(f"{config.precision.upper()}: calibrating and quantizing the {name} graph")
        try:
            quant_summary = job.quant.quantize(spec, rewritten)
        except ValueError as e:  # a linear the model's modules do not compute: one line
            raise ExportError(f"--{config.precision}: {e}") from None
    data, ort_file, trt_model = _write_graphs(job, name, rewritten, tmp)
    feeds, outputs = _references(job, ref_spec, name, tmp)
    inputs, outs = mf.graph_io(trt_model)
    entry = {"file": f"{name}.onnx", "ort_file": ort_file, "trt_file": f"{name}.trt.onnx",
             "external_data": data.name if data else None, "inputs": f"{name}.inputs.json",
             "ref": f"{name}.ref.json", "io": {"inputs": inputs, "outputs": outs}, **spec.meta,
             "profile": mf.profile_shapes(name, inputs, config, job.max_positions, spec.meta.get("patches")),
             "phm_nodes": {op: sum(1 for n in trt_model.graph.node if n.op_type == op)
                           for op in ("PHMLinear", "PHMFFN")},
             "plugins": mf.plugin_requirements(trt_model),
             "tolerances": _tolerances(config, outputs, tmp / ort_file, feeds, job.float_np),
             **({"ort_fusion": job.fusions[name]} if job.fusions.get(name) else {}),
             **({config.precision: quant_summary} if quant_summary is not None else {})}
    if name == "vision" and not spec.axes:  # LLaVA: a runtime lays out the prompt's image tokens by this
        # count, which the ONNX graph leaves symbolic (its features are a Concat over images)
        entry["image_tokens"] = int(outputs[0][spec.outputs[0]].shape[0])
    return entry, report


def _write_support_files(job: _Job, graphs: dict, tmp: Path) -> dict:
    """hf/ (every non-weight file of the model dir), commands.sh, export_config.json; the commands."""
    job.stage("writing manifest and commands")
    hf = tmp / "hf"
    hf.mkdir()
    for f in sorted(job.model_dir.iterdir()):
        # hidden files are other tools' temporaries and locks (a writer interrupted mid-save), not the model's
        if (f.is_file() and not f.name.endswith(_WEIGHT_SUFFIXES) and f.name != "adapter_config.json"
                and not f.name.startswith(".")):
            shutil.copy2(f, hf / f.name)
    cmds = mf.commands(graphs, job.config)
    atomic_write_text(tmp / "commands.sh", mf.commands_sh(cmds, job.config))
    atomic_write_text(tmp / "export_config.json", job.config.to_json())
    return cmds


def _engines(job: _Job, graphs: dict, tmp: Path, trt_reason: str | None) -> dict:
    if trt_reason:
        log.warning("TensorRT engines not built: %s (commands.sh has the trtexec lines for %s)",
                    trt_reason, job.config.target)
        return {}
    job.stage("building TensorRT engines")
    return trt_engine.build_all(tmp, graphs, job.config)


def build_manifest(job: _Job, tmp: Path, graphs: dict, reports: list, cmds: dict, engines: dict,
                   report_file: str | None, trt_reason: str | None) -> dict:
    """manifest.json of the assembled dir `tmp` (format: phm.common.artifacts)."""
    config, doc = job.config, job.doc
    files = {f.relative_to(tmp).as_posix(): mf.file_entry(f) for f in sorted(tmp.rglob("*"))
             if f.is_file() and f.name != "manifest.json"}
    # TensorRT plugin creators the graphs need (phm-run checks them before loading TensorRT)
    plugins = sorted({(p["name"], p["version"], p["namespace"]) for g in graphs.values() for p in g["plugins"]})
    phm = None if doc is None else {
        "n": doc["phm"]["n"], "bases": doc["phm"]["bases"],
        "layers": [{k: t[k] for k in ("name", "tower", "layer", "role", "num_bases", "in_features", "out_features",
                                      "bias")} for t in job.layers]}
    return {
        "format_version": mf.MANIFEST_VERSION, "model_dir": str(job.model_dir),
        "model_type": job.model.config.model_type, "architecture": type(job.model).__name__,
        "precision": config.precision, "activations": config.activations, "report": report_file,
        **({"int4_accuracy": config.int4.accuracy} if config.int4 else {}),
        "target": {"name": config.target, "sm": config.sm}, "memory_plan": job.plan.to_dict(),
        "plugins": [dict(zip(("name", "version", "namespace"), t)) for t in plugins],
        "versions": mf.versions(), "graphs": graphs, "phm": phm,
        "mlps": [s.to_dict() for s in reports], "mlps_rewritten": sum(s.rewritten for s in reports),
        "mlps_total": len(reports), "params": job.counts,
        "onnx_bytes": sum(v["bytes"] for k, v in files.items() if k.endswith((".trt.onnx", ".onnx.data"))),
        "files": files, "commands": cmds, "engines": engines or None,
        "engine_status": "built" if engines else f"not built: {trt_reason}",
    }


def _export_model(model_dir: Path, config: ExportConfig, out_dir: Path,
                  on_stage: Callable[[str], None] | None) -> Path:
    stage = on_stage or (lambda msg: log.info("%s", msg))
    trt_reason = trt_engine.unavailable_reason()
    _check_request(config, out_dir, trt_reason)
    job, specs, ref_specs = _load_job(model_dir, config, stage)
    graphs, reports = {}, []
    with atomic_dir(out_dir, overwrite=config.overwrite) as tmp:
        for spec, ref_spec in zip(specs, ref_specs):
            graphs[spec.kind], report = _export_kind(job, spec, ref_spec, tmp)
            reports += report
        report_file = None
        if job.quant is not None:
            report_file = _quant_report(job.quant, tmp, graphs, job.doc, job.counts)
        cmds = _write_support_files(job, graphs, tmp)
        engines = _engines(job, graphs, tmp, trt_reason)
        manifest = build_manifest(job, tmp, graphs, reports, cmds, engines, report_file, trt_reason)
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for path in [tmp, *tmp.rglob("*")]:  # temp files/dirs are created private: publish normally
            path.chmod(0o755 if path.is_dir() or path.name == "commands.sh" else 0o644)
    log.info("wrote %s (%d graph(s), %d/%d MLPs rewritten, params %d → %d)", out_dir, len(graphs),
             manifest["mlps_rewritten"], manifest["mlps_total"], job.counts["params_before"],
             job.counts["params_after"])
    return out_dir
