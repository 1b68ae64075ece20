"""ONNX Runtime backend: drives an exported decoder graph (prefill and decode in one graph).

I/O contract (written by phm.export, read here from the session, never guessed from file names):
  inputs   input_ids (batch, seq) int64          LLMs
           inputs_embeds (batch, seq, hidden)     VLMs (embed.onnx output, image features merged in)
           attention_mask (batch, past+seq) int64,
           position_ids (batch, seq) int64 [optional]; (3, batch, seq) for Qwen2(.5)-VL (M-RoPE),
           past_key_values.{i}.key / .value (batch, kv_heads, past, head_dim)
  outputs  logits (batch, seq, vocab), present.{i}.key / .value (batch, kv_heads, past+seq, head_dim)

VLM artifacts (`OrtBackend.from_artifacts` on a dir with vision.onnx and embed.onnx): prefill
takes `images={"pixel_values": (patches, patch_dim)}` for a prompt laid out by
`VisionSpec.image_prompt`; the vision graph's features replace the image tokens' embeddings.
Qwen2(.5)-VL positions follow M-RoPE (phm.runtime.vlm) and decode positions continue from there;
LLaVA takes `images={"pixel_values": (1, 3, S, S)}` and the text decoder's cumsum(mask) - 1 positions.

The KV cache stays in OrtValues between steps (`run_with_ort_values`), so decode does not copy
the cache through numpy; only the last position's logits come back as an array.

A decoder whose attention phm-export fused into GroupQueryAttention (manifest `ort_fusion`,
export/ort_fuse.py) runs on a shared KV buffer instead: one (batch, kv_heads, capacity, head_dim)
OrtValue per past/present pair, allocated at prefill on the session's device and bound as both
input and output (IOBinding), so each step appends its token in place; the decode step's ids and
logits are bound to buffers allocated once too. That op counts each row's tokens from the mask
and wants them first, so a left-padded batch's tokens move to the front of their rows at prefill
and every row then grows by its own length.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from .backend import BackendError, device_memory_used_mb, position_ids_from_mask, read_manifest
from .vlm import VisionSpec, merge_image_features, mrope_step_positions

log = logging.getLogger(__name__)

__all__ = ["OrtBackend"]

_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _graph_facts(path: Path) -> tuple[str | None, int]:
    """(quantized, kv_capacity) read from the graph without its weights: quantized is "int8" where it
    holds INT8 DequantizeLinear nodes (an --int8 export: activation Q/DQ), "int4" where its
    DequantizeLinear nodes are all blocked (an --int4 export) or it holds MatMulNBits and no other
    DequantizeLinear, else None; kv_capacity is the positions of a GroupQueryAttention's rotary
    table (0: the traced attention, no shared KV buffer)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError …: one line
        raise BackendError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    gqa = next((n for n in model.graph.node if n.op_type == "GroupQueryAttention"), None)
    capacity = dims.get(gqa.input[7], [0])[0] if gqa is not None and len(gqa.input) > 7 else 0
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    if not dq and not any(n.op_type == "MatMulNBits" for n in model.graph.node):
        return None, capacity
    return ("int4" if all(any(a.name == "block_size" for a in n.attribute) for n in dq) else "int8"), capacity


def _to_front(arr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each row's unmasked positions (axis 1) moved to the front of the row, in order; zeros after."""
    out = np.zeros_like(arr)
    for b, keep in enumerate(mask.astype(bool)):
        out[b, :keep.sum()] = arr[b, keep]
    return out


def _session(ort, path: Path, providers: list[str] | None, threads: int | None, quantized: str | None,
             prepack: bool = True, int4_accuracy: int = 1):
    """An InferenceSession of the file exactly as exported (phm-export prepared it: ort_graph.py).
    ONNX Runtime maps the external weights file; `prepack` lets it repack every MatMul weight into
    its GEMM layout at session build (a private copy: most of a large model's start time), without
    it the kernels read the mapped file as it is (slower decode on CPUs, no copy)."""
    if not path.is_file():
        raise BackendError(f"ONNX model {path} does not exist")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: fp16 graphs make the CPU constant folder warn per node
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if quantized == "int8":
        # The file's W8A8 linears are MatMulIntegerToFloat already (phm-export's lower_int8.py). ORT's
        # QDQ rewrites would turn each weight-only DequantizeLinear -> MatMul into a kernel that also
        # quantizes the activations; off, the constant folder dequantizes those weights once at load
        # instead of every step (fp32 copies in memory: ORT has no exact INT8 weight-only CPU kernel).
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
        # x86 without VNNI: ORT's uint8 x int8 GEMM can saturate in int16 pair sums; this asks ORT to
        # move such weights to uint8 first (a no-op on VNNI/AMX x86 and ARM, where the kernel is exact)
        opts.add_session_config_entry("session.x64quantprecision", "1")
    if quantized == "int4":
        # INT4 needs the QDQ rewrite: each blocked INT4 DequantizeLinear -> MatMul becomes MatMulNBits,
        # at the export's accuracy level (manifest int4_accuracy): 1 is fp32 arithmetic on the
        # dequantized weights (what the graph says), 4 quantizes the activations to INT8 per block.
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(int4_accuracy))
    # The memory pattern is planned per input shape, and every decode step has a new past length:
    # planning it each step is pure overhead (measured ~5-10 % of a SmolLM2 CPU decode step).
    opts.enable_mem_pattern = False
    if not prepack:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        opts.intra_op_num_threads = threads
    available = ort.get_available_providers()
    providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:  # ORT raises its own exception types; report one line
        raise BackendError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from None


class OrtBackend:
    name = "ort"

    def __init__(self, onnx_path: str | Path, providers: list[str] | None = None, threads: int | None = None,
                 vision: VisionSpec | None = None, quantized: str | None = None,
                 embed_path: str | Path | None = None, vision_path: str | Path | None = None,
                 prepack: bool = True, kv_capacity: int | None = None, int4_accuracy: int = 1):
        """`onnx_path`: the decoder graph, loaded as it is (from_artifacts picks the file phm-export
        prepared for ONNX Runtime). `vision`: the VLM's image spec; `embed_path`/`vision_path` its
        other graphs (default: embed.onnx / vision.onnx beside the decoder). `quantized`: "int8" or "int4"
        where the graphs hold Q/DQ nodes, "" where they hold none; `kv_capacity`: the shared KV
        buffer's positions for a GroupQueryAttention decoder, 0 for the traced attention (either
        None: read from the decoder graph). `prepack`: False keeps the weights memory-mapped as they
        are (_session). `int4_accuracy`: MatMulNBits' accuracy level for the INT4 linears ONNX Runtime
        fuses (the export's `int4_accuracy`; lowered PHM cores carry theirs in the graph)."""
        import onnxruntime as ort

        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise BackendError(f"ONNX model {onnx_path} does not exist")
        if quantized is None or kv_capacity is None:
            facts = _graph_facts(onnx_path)
            quantized = facts[0] if quantized is None else quantized
            kv_capacity = facts[1] if kv_capacity is None else kv_capacity
        self.kv_capacity = kv_capacity
        self.session = _session(ort, onnx_path, providers, threads, quantized, prepack, int4_accuracy)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.embeds = "inputs_embeds" in self.inputs
        if not (self.embeds or "input_ids" in self.inputs) or "logits" not in self.output_names:
            raise BackendError(f"{onnx_path.name} is not a decoder graph (needs input_ids or inputs_embeds -> logits)")
        self.past_names = sorted((n for n in self.inputs if _PAST.fullmatch(n)),
                                 key=lambda n: (int(_PAST.fullmatch(n)[1]), _PAST.fullmatch(n)[2]))
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        missing = [n for n in self.present_names if n not in self.output_names]
        if missing:
            raise BackendError(f"{onnx_path.name}: past inputs without matching outputs {missing[:2]}")
        self.vision = vision
        self.embed_session = self.vision_session = None
        if self.embeds:
            if vision is None:
                raise BackendError(f"{onnx_path.name} takes inputs_embeds: open VLM artifacts with "
                                   "OrtBackend.from_artifacts")
            self.embed_session = _session(ort, Path(embed_path or onnx_path.with_name("embed.onnx")), providers,
                                          threads, quantized, prepack, int4_accuracy)
            self.vision_session = _session(ort, Path(vision_path or onnx_path.with_name("vision.onnx")), providers,
                                           threads, quantized, prepack, int4_accuracy)
        self.providers = self.session.get_providers()
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self._ort = ort
        self.peak_device_mb = None if self.device == "cpu" else 0.0
        self.cache = None
        self.rope_delta = None  # VLM: (batch,) M-RoPE position minus text position after an image
        self.lengths = None     # shared KV buffer: (batch,) tokens each row holds
        self.reserved = None    # shared KV buffer: positions to allocate (reset's max_tokens; None: kv_capacity)
        self.decode_io = None   # shared KV buffer: the decode step's ids and logits OrtValues
        self.io = None          # shared KV buffer: the IOBinding the steps of one generation reuse

    @classmethod
    def from_artifacts(cls, artifacts: str | Path, providers: list[str] | None = None,
                       threads: int | None = None, manifest: dict | None = None,
                       prepack: bool = True) -> "OrtBackend":
        """The backend of an artifacts dir written by phm-export (text decoder or VLM): the graphs it
        prepared for ONNX Runtime (manifest `ort_file`), loaded without any rewriting. `manifest`: the
        dir's manifest where the caller has read it already (read and checked here otherwise);
        `prepack`: False keeps the weights memory-mapped (phm-run --mapped-weights)."""
        artifacts = Path(artifacts)
        if manifest is None:  # a bad artifacts dir is one clear error before any session
            manifest = read_manifest(artifacts)
        graphs = manifest["graphs"]
        if "decoder" not in graphs:
            raise BackendError(f"{artifacts} holds no decoder graph")
        path = {kind: artifacts / g["ort_file"] for kind, g in graphs.items()}
        fusion = graphs["decoder"].get("ort_fusion") or {}
        return cls(path["decoder"], providers, threads, VisionSpec.from_artifacts(artifacts, manifest),
                   quantized=manifest.get("precision") if manifest.get("precision") in ("int8", "int4") else "",
                   embed_path=path.get("embed"), vision_path=path.get("vision"), prepack=prepack,
                   kv_capacity=fusion.get("positions", 0) if fusion.get("attention") == "GroupQueryAttention" else 0,
                   int4_accuracy=manifest.get("int4_accuracy", 1))

    def reset(self, max_tokens: int | None = None) -> None:
        """Forget the KV cache. `max_tokens`: the longest row the next generation reaches; the shared
        KV buffers are allocated for that many positions (at most the exported context) instead of
        the whole context: their memory, and the attention kernel's per-step work, follow the request."""
        self.cache = self.lengths = self.decode_io = self.io = None
        self.reserved = max_tokens
        if self.peak_device_mb is not None:
            self.peak_device_mb = 0.0
        self.rope_delta = None

    def _empty_past(self, batch: int) -> dict:
        feeds = {}
        for name in self.past_names:
            meta = self.inputs[name]
            _, heads, _, head_dim = meta.shape
            arr = np.zeros((batch, heads, 0, head_dim), dtype=_ORT_DTYPES[meta.type])
            feeds[name] = self._ort.OrtValue.ortvalue_from_numpy(arr)
        return feeds

    def _vlm_feeds(self, ids: np.ndarray, mask: np.ndarray, images: dict | None) -> dict:
        """inputs_embeds and position_ids of a VLM step: (3, batch, seq) M-RoPE for Qwen2(.5)-VL,
        (batch, seq) cumsum(mask) - 1 for LLaVA (as for a text decoder)."""
        embeds = self.embed_session.run(None, {"input_ids": ids})[0]
        spec = self.vision
        grid = None
        if images:
            if (mask == 0).any():
                raise BackendError("image prompts take unpadded rows (attention_mask all ones)")
            feeds = spec.vision_feeds(images)
            pixel_input = self.vision_session.get_inputs()[0]  # float16 in an --fp16 export
            feeds[pixel_input.name] = feeds[pixel_input.name].astype(_ORT_DTYPES[pixel_input.type])
            try:
                features = self.vision_session.run(None, feeds)[0]
            except Exception as e:  # ORT's own types: out of memory on a large image, above all
                patches = len(feeds[pixel_input.name])
                raise BackendError(f"the vision graph failed on an image of {patches} patches "
                                   f"({str(e).splitlines()[0][:200]}); re-export with a smaller --max-pixels") from None
            try:
                embeds = merge_image_features(embeds, ids, features, spec.image_token_id)
            except ValueError as e:
                raise BackendError(f"prompt and image do not fit: {e}") from None
            if spec.mrope:
                grid = tuple(int(v) for v in np.asarray(images["image_grid_thw"]).reshape(-1)[:3])
        elif self.cache is None and (ids == spec.image_token_id).any():
            raise BackendError("the prompt has image tokens but no image was given")
        if not spec.mrope:
            return {"inputs_embeds": embeds, "position_ids": position_ids_from_mask(mask, ids.shape[1])}
        try:
            pos, self.rope_delta = mrope_step_positions(ids, mask, self.rope_delta if self.cache is not None else None,
                                                        grid, spec.image_token_id, spec.spatial_merge_size)
        except (ValueError, StopIteration) as e:
            raise BackendError(f"prompt and image do not fit: {e or 'more image-token runs than images'}") from None
        return {"inputs_embeds": embeds, "position_ids": pos.astype(np.int64)}

    def _step(self, ids: np.ndarray, mask: np.ndarray, images: dict | None = None) -> np.ndarray:
        ov = self._ort.OrtValue.ortvalue_from_numpy
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        feeds = {"attention_mask": ov(np.ascontiguousarray(mask, dtype=np.int64))}
        if self.embeds:
            feeds.update({k: ov(v) for k, v in self._vlm_feeds(ids, mask, images).items()})
        else:
            feeds["input_ids"] = ov(ids)
            if "position_ids" in self.inputs:
                feeds["position_ids"] = ov(position_ids_from_mask(mask, ids.shape[1]))
        feeds.update(self.cache if self.cache is not None else self._empty_past(ids.shape[0]))
        outs = self.session.run_with_ort_values(["logits", *self.present_names], feeds)
        self.cache = dict(zip(self.past_names, outs[1:]))
        if self.peak_device_mb is not None:
            self.peak_device_mb = max(self.peak_device_mb, device_memory_used_mb() or 0.0)
        logits = outs[0].numpy()
        return logits[:, -1].astype(np.float32)

    def _shared_step(self, ids: np.ndarray, mask: np.ndarray, images: dict | None = None) -> np.ndarray:
        """One step on the shared KV buffers (GroupQueryAttention decoders): rows right-aligned to
        their own lengths, past and present bound to the same OrtValues."""
        ort, device = self._ort, "cuda" if self.device == "cuda" else "cpu"
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        batch, seq = ids.shape
        first = self.cache is None
        feeds = self._vlm_feeds(ids, mask, images) if self.embeds else {"input_ids": ids}
        if first:  # prefill: each row's tokens to the front, the buffers allocated (not touched)
            mask = np.asarray(mask, dtype=np.int64)
            self.lengths = mask.sum(1)
            feeds = {k: _to_front(v, mask) for k, v in feeds.items() if k != "position_ids"}
            self.cache = {}
            positions = min(self.kv_capacity, self.reserved or self.kv_capacity)
            for name in self.past_names:
                meta = self.inputs[name]
                shape = (batch, meta.shape[1], positions, meta.shape[3])
                self.cache[name] = ort.OrtValue.ortvalue_from_shape_and_type(shape, _ORT_DTYPES[meta.type], device, 0)
            last = self.lengths - 1
        else:
            feeds.pop("position_ids", None)
            self.lengths = self.lengths + seq
            last = np.full(batch, seq - 1)
        buffer = self.cache[self.past_names[0]].shape()[2]
        if self.lengths.max() > buffer:
            raise BackendError(f"{int(self.lengths.max())} tokens exceed the KV buffer of {buffer} positions "
                               + ("(the exported context)" if buffer == self.kv_capacity else
                                  f"reserved by reset(max_tokens={self.reserved})"))
        width = int(self.lengths.max())
        feeds["attention_mask"] = (np.arange(width)[None] < self.lengths[:, None]).astype(np.int64)
        if "position_ids" in self.inputs:  # the graph computes positions itself; fed for the contract
            feeds["position_ids"] = np.ascontiguousarray(
                np.maximum(self.lengths[:, None] - seq + np.arange(seq)[None], 0), dtype=np.int64)
        if first:
            io = self.io = self.session.io_binding()
            for name, value in feeds.items():
                io.bind_cpu_input(name, np.ascontiguousarray(value))
            io.bind_output("logits", device)  # first: get_outputs() lists the outputs in binding order
            for past, present in zip(self.past_names, self.present_names):
                io.bind_ortvalue_input(past, self.cache[past])
                io.bind_ortvalue_output(present, self.cache[past])
            self.session.run_with_iobinding(io)
            logits = io.get_outputs()[0].numpy()
            # the decode step's ids and logits, allocated and bound once: a decode step rebinds only
            # the mask and positions (rebinding every KV buffer each step measured 3-8 % slower on SmolLM2)
            vocab, dtype = logits.shape[-1], logits.dtype
            self.decode_io = {"ids": ort.OrtValue.ortvalue_from_numpy(np.zeros((batch, 1), np.int64), device, 0),
                              "logits": ort.OrtValue.ortvalue_from_shape_and_type((batch, 1, vocab), dtype, device, 0)}
            if not self.embeds:
                io.bind_ortvalue_input("input_ids", self.decode_io["ids"])
            io.bind_ortvalue_output("logits", self.decode_io["logits"])
        else:
            if not self.embeds:
                self.decode_io["ids"].update_inplace(feeds.pop("input_ids"))
            for name, value in feeds.items():
                self.io.bind_cpu_input(name, np.ascontiguousarray(value))
            self.session.run_with_iobinding(self.io)
            logits = self.decode_io["logits"].numpy()
        if self.peak_device_mb is not None:
            self.peak_device_mb = max(self.peak_device_mb, device_memory_used_mb() or 0.0)
        return logits[np.arange(batch), last].astype(np.float32)

    def prefill(self, input_ids, attention_mask, images=None):
        if images and not self.embeds:
            raise BackendError("an image was given but this artifact is a text-only model")
        step = self._shared_step if self.kv_capacity else self._step
        return step(input_ids, attention_mask, images)

    def decode(self, next_ids, attention_mask):
        return (self._shared_step if self.kv_capacity else self._step)(next_ids, attention_mask)
