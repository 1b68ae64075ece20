"""The ONNX I/O contract of the exported graphs: names, axes, dtypes (one place; docs/export.md).

Every graph the exporter writes uses these names and symbolic axes, and manifest.json records
them per file with concrete dtypes. The runtime builds on exactly this.

Graph kinds:

``decoder`` (causal LM, KV cache; prefill and decode are the same graph)
    inputs   input_ids            int64 (batch, sequence)          LLMs (llama, qwen2, gpt2 …)
             inputs_embeds        float (batch, sequence, hidden)  VLMs instead of input_ids
             attention_mask       int64 (batch, total_sequence)    1 = attend, 0 = padding;
                                                                   total = past_sequence + sequence
             position_ids         int64 (batch, sequence)          LLMs, LLaVA
                                  int64 (3, batch, sequence)       Qwen2(.5)-VL (M-RoPE rows t, h, w)
             past_key_values.{i}.key / .value
                                  float (batch, kv_heads, past_sequence, head_dim)
    outputs  logits               float (batch, sequence, vocab)
             present.{i}.key / .value
                                  float (batch, kv_heads, total_sequence, head_dim)
``embed``    input_ids int64 (batch, sequence) → inputs_embeds float (batch, sequence, hidden)   VLMs
``vision``   Qwen2(.5)-VL, any image grid (dynamic patches; TensorRT profile over the manifest's
             [min_pixels, max_pixels]):
    inputs   pixel_values         float (patches, patch_dim)       the HF processor's patch layout
             vision_position_ids  int64 (patches, 2)               rotary (h, w) position per patch
             image_segments       int64 (patches,)                 frame id per patch (full attention)
             window_segments      int64 (patches,)                 window id per patch (Qwen2.5-VL only)
    outputs  image_features       float (image_tokens, hidden)     image_tokens = patches / merge²
             (phm.runtime.vlm.vision_feeds computes the int64 inputs from the image's grid)
             LLaVA: pixel_values float (1, channels, size, size), one image, size = manifest's
             image_size; image_features = projector output, one row per image token
``encoder``  input_ids, attention_mask int64 (batch, sequence)
             → last_hidden_state float (batch, sequence, hidden)                          BERT
"""

from __future__ import annotations

INPUT_IDS = "input_ids"
INPUTS_EMBEDS = "inputs_embeds"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
LOGITS = "logits"
LAST_HIDDEN_STATE = "last_hidden_state"
PIXEL_VALUES = "pixel_values"
VISION_POSITION_IDS = "vision_position_ids"
IMAGE_SEGMENTS = "image_segments"
WINDOW_SEGMENTS = "window_segments"
IMAGE_FEATURES = "image_features"

# Symbolic axis names (ONNX dim_param).
BATCH = "batch"
SEQUENCE = "sequence"
PAST_SEQUENCE = "past_sequence"
TOTAL_SEQUENCE = "total_sequence"
PATCHES = "patches"
IMAGE_TOKENS = "image_tokens"

GRAPH_KINDS = ("decoder", "embed", "vision", "encoder")


def past_names(num_layers: int) -> list[str]:
    """past_key_values.{i}.key, past_key_values.{i}.value for i in 0..L-1 (interleaved)."""
    return [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def decoder_io(num_layers: int, embeds: bool, mrope: bool | None = None) -> tuple[list[str], list[str], dict]:
    """(input names, output names, dynamic axes) of a decoder graph; `mrope` (default: `embeds`) gives
    position_ids a leading axis of 3."""
    mrope = embeds if mrope is None else mrope
    first = INPUTS_EMBEDS if embeds else INPUT_IDS
    inputs = [first, ATTENTION_MASK, POSITION_IDS, *past_names(num_layers)]
    outputs = [LOGITS, *present_names(num_layers)]
    axes = {first: {0: BATCH, 1: SEQUENCE},
            ATTENTION_MASK: {0: BATCH, 1: TOTAL_SEQUENCE},
            POSITION_IDS: {1: BATCH, 2: SEQUENCE} if mrope else {0: BATCH, 1: SEQUENCE},
            LOGITS: {0: BATCH, 1: SEQUENCE}}
    axes.update({name: {0: BATCH, 2: PAST_SEQUENCE} for name in past_names(num_layers)})
    axes.update({name: {0: BATCH, 2: TOTAL_SEQUENCE} for name in present_names(num_layers)})
    return inputs, outputs, axes


def embed_io() -> tuple[list[str], list[str], dict]:
    return [INPUT_IDS], [INPUTS_EMBEDS], {INPUT_IDS: {0: BATCH, 1: SEQUENCE},
                                          INPUTS_EMBEDS: {0: BATCH, 1: SEQUENCE}}


def vision_io() -> tuple[list[str], list[str], dict]:
    """LLaVA: one fixed-size image (static)."""
    return [PIXEL_VALUES], [IMAGE_FEATURES], {}


def qwen_vision_io(windowed: bool) -> tuple[list[str], list[str], dict]:
    """Qwen2(.5)-VL: any grid; `windowed` (Qwen2.5-VL) adds the window segments."""
    inputs = [PIXEL_VALUES, VISION_POSITION_IDS, IMAGE_SEGMENTS, *([WINDOW_SEGMENTS] if windowed else [])]
    axes = {name: {0: PATCHES} for name in inputs}
    axes[IMAGE_FEATURES] = {0: IMAGE_TOKENS}
    return inputs, [IMAGE_FEATURES], axes


def encoder_io() -> tuple[list[str], list[str], dict]:
    axes = {name: {0: BATCH, 1: SEQUENCE} for name in (INPUT_IDS, ATTENTION_MASK, LAST_HIDDEN_STATE)}
    return [INPUT_IDS, ATTENTION_MASK], [LAST_HIDDEN_STATE], axes
