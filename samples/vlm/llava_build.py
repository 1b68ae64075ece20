"""Assemble a LLaVA-style VLM from a vision encoder and a causal LM: transformers' real Llava classes.

    model, processor = assemble_llava(dinov2, smollm2, tokenizer, image_size=112)
    save_vlm(model, processor, out_dir)        # a normal HF model dir (safetensors, processor, template)

LlavaForConditionalGeneration builds its vision tower with AutoModel.from_config(vision_config),
so any vision model whose output carries `hidden_states` fits; DINOv2 does (Dinov2Model, a CLS
token then the patch grid, position embeddings interpolated to the input size). Choices for DINOv2:

- `vision_feature_layer=-1`: the last block's output. DINOv2 was trained with its features read
  after the last block (plus the final LayerNorm, which Llava never applies: `hidden_states[-1]`
  is the pre-norm output; the projector is trained on what Llava actually feeds it);
- `vision_feature_select_strategy="default"`: drop the CLS token, one LM token per 14-pixel patch;
  the processor writes (size / 14)² image tokens (`num_additional_image_tokens=1` for the CLS);
- a small square input (`image_size`, a multiple of 14): the image tokens dominate the LM's
  sequence, so this is the CPU-cost knob. The position embeddings are interpolated to that grid
  once, here, with Dinov2's own `interpolate_pos_encoding` (exactly what it would do on every
  call), and `vision_config.image_size` says the size: the tower's input size is then read off the
  config, as for CLIP-based LLaVA (the exporter specialises the vision graph to it).

The image token `<image>` is added to the tokenizer as a special token and the LM's (tied)
embeddings grow by one row; the chat template is ChatML (SmolLM2's) with `{"type": "image"}`
content items rendered as the image token, without a default system prompt.
"""

from __future__ import annotations

from pathlib import Path

import torch

from phm.common.fsutil import atomic_dir

__all__ = ["CHAT_TEMPLATE", "IMAGE_TOKEN", "assemble_llava", "build_processor", "save_vlm"]

IMAGE_TOKEN = "<image>"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}" + IMAGE_TOKEN + "\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_processor(tokenizer, image_size: int, patch_size: int, select_strategy: str = "default"):
    """LlavaProcessor: fixed square resize to `image_size` (no crop), ImageNet normalisation, ChatML."""
    import transformers

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a multiple of the patch size {patch_size}")
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    # the PIL backend: what BitImageProcessor falls back to anyway without torchvision (not a dependency)
    image_processor = transformers.BitImageProcessorPil(
        do_resize=True, size={"height": image_size, "width": image_size}, do_center_crop=False,
        resample=3, do_rescale=True, do_normalize=True, image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD), do_convert_rgb=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    return transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                                       vision_feature_select_strategy=select_strategy, chat_template=CHAT_TEMPLATE,
                                       image_token=IMAGE_TOKEN, num_additional_image_tokens=1)


def _at_image_size(vision: torch.nn.Module, image_size: int) -> tuple[dict, dict]:
    """(config dict, state dict) of `vision` with its position embeddings resampled to `image_size`."""
    config, state = vision.config.to_dict(), dict(vision.state_dict())
    if config.get("image_size") == image_size:
        return config, state
    embeddings = vision.embeddings
    if not hasattr(embeddings, "interpolate_pos_encoding"):
        raise ValueError(f"{type(vision).__name__} cannot resample its position embeddings to {image_size} pixels")
    tokens = (image_size // vision.config.patch_size) ** 2 + 1
    with torch.no_grad():
        pos = embeddings.interpolate_pos_encoding(torch.zeros(1, tokens, vision.config.hidden_size),
                                                  image_size, image_size)
    config["image_size"] = image_size
    state["embeddings.position_embeddings"] = pos.detach().clone()
    return config, state


def assemble_llava(vision: torch.nn.Module, lm: torch.nn.Module, tokenizer, image_size: int,
                   feature_layer: int = -1, select_strategy: str = "default", seed: int = 0):
    """(LlavaForConditionalGeneration, LlavaProcessor) with `vision`'s and `lm`'s weights and a fresh
    projector (seeded). `tokenizer` gains the image token; the LM's embeddings grow to match it."""
    import transformers

    processor = build_processor(tokenizer, image_size, vision.config.patch_size, select_strategy)
    vision_config, vision_state = _at_image_size(vision, image_size)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    text_config = lm.config.to_dict()
    text_config["vocab_size"] = max(lm.config.vocab_size, len(tokenizer))
    config = transformers.LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_id=image_token_id,
        vision_feature_layer=feature_layer, vision_feature_select_strategy=select_strategy,
        projector_hidden_act="gelu", multimodal_projector_bias=True,
        tie_word_embeddings=getattr(lm.config, "tie_word_embeddings", False))
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(config)
    old_vocab = lm.get_input_embeddings().weight.shape[0]
    if text_config["vocab_size"] > old_vocab:
        lm.resize_token_embeddings(text_config["vocab_size"], mean_resizing=False)
        with torch.no_grad():  # the image token's row is never read (Llava replaces it): zero, not random
            lm.get_input_embeddings().weight[old_vocab:].zero_()
    model.model.vision_tower.load_state_dict(vision_state, strict=True)
    model.model.language_model.load_state_dict(lm.model.state_dict(), strict=True)
    model.lm_head.load_state_dict(lm.lm_head.state_dict(), strict=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=lm.generation_config.bos_token_id, eos_token_id=lm.generation_config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else lm.generation_config.eos_token_id)
    return model.eval(), processor


def save_vlm(model: torch.nn.Module, processor, out_dir: str | Path, overwrite: bool = True) -> Path:
    """The model (safetensors), its processor, tokenizer and chat template as one HF dir, atomically."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out_dir
