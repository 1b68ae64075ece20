"""Torch side of the export: flat-tensor wrappers around HF models and the torch.onnx call.

Each wrapper's forward takes and returns plain tensors in the order of `io_names`, so one traced
graph serves prefill (past_sequence = 0) and decode (sequence = 1). The KV cache is rebuilt as a
transformers DynamicCache inside forward.

Exporter choice (torch 2.13): the TorchScript-based `torch.onnx.export(..., dynamo=False)`. It
traces these HF models with dynamic batch/sequence/past axes in well under a second each and
needs no onnxscript; the dynamo exporter (`dynamo=True`) needs onnxscript (not a dependency here)
and takes far longer on HF decoders. Tracing records one Python path, so every branch the models
take on shapes must be shape-generic: the tests run the graphs at other batch/sequence/past sizes
than the trace (including past = 0, sequence = 1 and left padding) against torch.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import io_names as io

log = logging.getLogger(__name__)

OPSET = 17
VLM_TYPES = ("qwen2_vl", "qwen2_5_vl", "llava")
MROPE_TYPES = ("qwen2_vl", "qwen2_5_vl")   # VLMs whose decoder takes (3, batch, seq) M-RoPE positions
ENCODER_TYPES = ("bert",)
DECODER_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
SUPPORTED_TYPES = DECODER_TYPES + VLM_TYPES + ENCODER_TYPES


def text_config(model: nn.Module):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def cache_geometry(model: nn.Module) -> tuple[int, int, int]:
    """(num_layers, kv_heads, head_dim) of the language model's KV cache."""
    cfg = text_config(model)
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return cfg.num_hidden_layers, kv_heads, head_dim


def _cache(model: nn.Module, past: tuple) -> "DynamicCache":  # noqa: F821
    from transformers import DynamicCache

    cache = DynamicCache(config=text_config(model))
    for i in range(len(past) // 2):
        cache.update(past[2 * i], past[2 * i + 1], i)
    return cache


def _presents(cache) -> list[torch.Tensor]:
    out = []
    for layer in cache.layers:
        out += [layer.keys, layer.values]
    return out


class DecoderGraph(nn.Module):
    """(input_ids | inputs_embeds, attention_mask, position_ids, *past) → (logits, *present)."""

    def __init__(self, model: nn.Module, embeds: bool):
        super().__init__()
        self.model, self.embeds = model, embeds

    def forward(self, first, attention_mask, position_ids, *past):
        cache = _cache(self.model, past)
        if self.embeds:  # VLM: the language model alone, image features already merged in
            out = self.model.model.language_model(inputs_embeds=first, attention_mask=attention_mask,
                                                  position_ids=position_ids, past_key_values=cache,
                                                  use_cache=True)
            logits = self.model.lm_head(out.last_hidden_state)
        else:
            out = self.model(input_ids=first, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True)
            logits = out.logits
        return (logits, *_presents(out.past_key_values))


class EmbedGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.embed = model.get_input_embeddings()

    def forward(self, input_ids):
        return self.embed(input_ids)


class VisionGraph(nn.Module):
    """Qwen2(.5)-VL vision tower + merger for any image grid:
    (pixel_values, vision_position_ids, image_segments[, window_segments]) → image_features.

    transformers' tower derives rotary positions, window order and per-segment attention chunks
    from grid_thw with Python loops (traced, they would freeze one grid). Here the host computes
    the positions and segment ids (phm.runtime.vlm.vision_feeds) and every attention is the
    block's own projections with a segment mask, in the processor's patch order. Masking instead
    of HF's window reordering gives the same result: rotary positions travel with their patches,
    norms and MLPs are per patch, and a merge block's patches are consecutive in both orders.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        visual = model.model.visual
        full = getattr(visual, "fullatt_block_indexes", None)  # Qwen2-VL has none: every block is full
        self.full_blocks = set(range(len(visual.blocks)) if full is None else full)
        self.windowed = window_patches(model) is not None
        self._rotary = sys.modules[type(visual).__module__].apply_rotary_pos_emb_vision

    def forward(self, pixel_values, position_ids, image_segments, window_segments=None):
        visual = self.model.model.visual
        x = visual.patch_embed(pixel_values)
        cos, sin = visual.rotary_pos_emb(x, position_ids)
        full = image_segments.unsqueeze(0) == image_segments.unsqueeze(1)
        window = window_segments.unsqueeze(0) == window_segments.unsqueeze(1) if self.windowed else full
        for i, block in enumerate(visual.blocks):
            x = self._block(block, x, cos, sin, full if i in self.full_blocks else window)
        return visual.merger(x)

    def _block(self, block, x, cos, sin, allowed):
        attn = block.attn
        n = x.shape[0]
        q, k, v = attn.qkv(block.norm1(x)).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = self._rotary(q, k, cos, sin)
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))               # (heads, patches, head_dim)
        scores = torch.matmul(q, k.transpose(1, 2)) * attn.scaling
        scores = scores.masked_fill(~allowed, float("-inf"))            # every row keeps its own patch
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        x = x + attn.proj(torch.matmul(probs, v).transpose(0, 1).reshape(n, -1))
        return x + block.mlp(block.norm2(x))


class LlavaVisionGraph(nn.Module):
    """pixel_values (1, channels, size, size) → projected image features (image_tokens, hidden): the
    vision tower, Llava's feature-layer/CLS selection and the projector, at the config's image size."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        cfg = self.model.config
        out = self.model.model.get_image_features(pixel_values, vision_feature_layer=cfg.vision_feature_layer,
                                                  vision_feature_select_strategy=cfg.vision_feature_select_strategy)
        return torch.cat(list(out.pooler_output), dim=0)


class EncoderGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@dataclass
class GraphSpec:
    """One ONNX file to export: its wrapper, sample inputs for the trace and its I/O contract."""

    kind: str                      # io_names.GRAPH_KINDS
    module: nn.Module
    sample: tuple
    inputs: list
    outputs: list
    axes: dict
    towers: tuple                  # which MLP towers live in this graph ("language", "vision")
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.module.eval()  # a fresh wrapper is in train mode; the exporter would restore that


def window_patches(model: nn.Module) -> int | None:
    """Qwen2.5-VL's attention window side in patches (window_size / patch_size); None for Qwen2-VL,
    whose vision blocks all attend over the whole image."""
    vcfg = model.config.vision_config
    return vcfg.window_size // vcfg.patch_size if model.config.model_type == "qwen2_5_vl" else None


def vision_grid(model: nn.Module) -> torch.Tensor:
    """The image grid (t, h, w) in patches of the Qwen vision graph's trace and reference inputs:
    2 × 3 windows of Qwen2.5-VL (4 × 6 merged tokens' worth on towers without windows), so the
    reference checks window and full attention on a non-square grid."""
    vcfg = model.config.vision_config
    side = window_patches(model) or 2 * vcfg.spatial_merge_size
    return torch.tensor([[1, 2 * side, 3 * side]], dtype=torch.int64)


def qwen_vision_sample(model: nn.Module, grid: torch.Tensor, gen: torch.Generator) -> tuple:
    """Seeded inputs of the Qwen vision graph for one grid: random patches + the grid's host feeds."""
    from phm.runtime.vlm import vision_feeds

    vcfg = model.config.vision_config
    patch_dim = vcfg.in_channels * vcfg.temporal_patch_size * vcfg.patch_size ** 2
    feeds = vision_feeds(grid.numpy(), vcfg.spatial_merge_size, window_patches(model))
    pixels = torch.randn(int(grid.prod()), patch_dim, generator=gen)
    return (pixels, *(torch.from_numpy(v) for v in feeds.values()))


def graph_specs(model: nn.Module, batch: int = 2, seq: int = 3, past: int = 2) -> list[GraphSpec]:
    """The graphs a model exports to, with trace-time sample inputs."""
    model_type = model.config.model_type
    if model_type not in SUPPORTED_TYPES:
        raise ValueError(f"no ONNX export path for model_type {model_type!r}; supported: {', '.join(SUPPORTED_TYPES)}")
    gen = torch.Generator().manual_seed(0)
    if model_type in ENCODER_TYPES:
        ids = torch.randint(3, text_config(model).vocab_size, (batch, seq), generator=gen)
        mask = torch.ones(batch, seq, dtype=torch.int64)
        names = io.encoder_io()
        return [GraphSpec("encoder", EncoderGraph(model), (ids, mask), *names, towers=("language",))]
    layers, kv_heads, head_dim = cache_geometry(model)
    vlm = model_type in VLM_TYPES
    cfg = text_config(model)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq).expand(batch, seq)
    kv = [torch.randn(batch, kv_heads, past, head_dim, generator=gen) for _ in range(2 * layers)]
    specs = []
    if model_type == "llava":  # plain 1-D positions; image features scattered at image-token positions
        first = torch.randn(batch, seq, cfg.hidden_size, generator=gen)
        ids = torch.randint(3, cfg.vocab_size, (batch, seq), generator=gen)
        vcfg = model.config.vision_config
        pixels = torch.randn(1, vcfg.num_channels, vcfg.image_size, vcfg.image_size, generator=gen)
        specs.append(GraphSpec("vision", LlavaVisionGraph(model), (pixels,), *io.vision_io(), towers=("vision",),
                               meta={"image_size": vcfg.image_size}))
        specs.append(GraphSpec("embed", EmbedGraph(model), (ids,), *io.embed_io(), towers=()))
    elif vlm:
        first = torch.randn(batch, seq, cfg.hidden_size, generator=gen)
        pos = pos.unsqueeze(0).expand(3, batch, seq)
        ids = torch.randint(3, cfg.vocab_size, (batch, seq), generator=gen)
        graph = VisionGraph(model)
        specs.append(GraphSpec("vision", graph, qwen_vision_sample(model, vision_grid(model), gen),
                               *io.qwen_vision_io(graph.windowed), towers=("vision",)))
        specs.append(GraphSpec("embed", EmbedGraph(model), (ids,), *io.embed_io(), towers=()))
    else:
        first = torch.randint(3, cfg.vocab_size, (batch, seq), generator=gen)
    specs.append(GraphSpec("decoder", DecoderGraph(model, embeds=vlm), (first, mask, pos, *kv),
                           *io.decoder_io(layers, embeds=vlm, mrope=model_type in MROPE_TYPES), towers=("language",)))
    return specs


@contextlib.contextmanager
def _shapes_only():
    """The exporter's ONNX shape inference without the parameters' values. Given them, it computes
    the value of every node they feed (each linear's transposed weight): the whole model in memory
    again. Shapes come from the graph inputs' types, so nothing else changes; without weights there
    is no constant folding that would use those values."""
    infer = torch._C._jit_pass_onnx_graph_shape_type_inference
    torch._C._jit_pass_onnx_graph_shape_type_inference = lambda graph, params, opset: infer(graph, {}, opset)
    try:
        yield
    finally:
        torch._C._jit_pass_onnx_graph_shape_type_inference = infer


def export_graph(spec: GraphSpec, path: Path, weights: bool = True) -> None:
    """Trace `spec.module` to ONNX at `path` (opset 17, TorchScript exporter). With weights, constants
    are folded; without (the exporter's way, bind.py), every parameter and buffer stays a graph input
    named by its attribute path and nothing is folded, so no weight is computed or serialised."""
    spec.module.eval()  # the exporter restores the wrapper's mode afterwards: keep it eval
    with torch.no_grad(), warnings.catch_warnings(), (contextlib.nullcontext() if weights else _shapes_only()):
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(spec.module, spec.sample, str(path), dynamo=False, opset_version=OPSET,
                          input_names=spec.inputs, output_names=spec.outputs, dynamic_axes=spec.axes,
                          do_constant_folding=weights, export_params=weights)
    log.debug("traced %s graph to %s", spec.kind, path)
