"""Test fixtures: tiny random-weight models of real architectures (real transformers classes, small configs).

For structure tests of substitution, checkpointing, export and runtime: they exercise the real
module trees and forward code, but their weights are random, so they are not fidelity evidence.

    model = tiny_model("qwen2_5_vl", seed=0)
    path = save_tiny_model("llama", tmp_path / "llama")   # a HF model dir (save_pretrained)
    save_char_tokenizer(path)                              # + a character tokenizer (CLIs end to end)
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["TINY_ARCHS", "save_char_tokenizer", "save_tiny_model", "tiny_config", "tiny_model"]

VOCAB = 256
_TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
# head_dim 16 (wider than hidden / heads, as in Qwen3 and Gemma): what ONNX Runtime's
# GroupQueryAttention CPU kernel takes (a multiple of 16), so the ONNX Runtime graph's attention is fused.
_GQA_TEXT = dict(_TEXT, head_dim=16)
_MROPE = {"rope_type": "default", "type": "mrope", "mrope_section": [2, 1, 1]}


def _config(arch: str):
    import transformers as tf

    if arch == "llama":
        return tf.LlamaConfig(**_TEXT, tie_word_embeddings=True)
    if arch == "qwen2":
        return tf.Qwen2Config(**_TEXT)
    if arch == "llama_gqa":
        return tf.LlamaConfig(**_GQA_TEXT, tie_word_embeddings=True)
    if arch == "qwen2_gqa":
        return tf.Qwen2Config(**_GQA_TEXT)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                             bos_token_id=1, eos_token_id=2)
    if arch == "bert":
        return tf.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=128)
    if arch == "qwen2_vl":
        return tf.Qwen2VLConfig(
            text_config=dict(_TEXT, rope_scaling=_MROPE),
            vision_config=dict(depth=2, embed_dim=32, hidden_size=32, mlp_ratio=2, num_heads=4, patch_size=4,
                               spatial_merge_size=2, temporal_patch_size=2),
            image_token_id=VOCAB - 1, video_token_id=VOCAB - 2, vision_start_token_id=VOCAB - 3,
            vision_end_token_id=VOCAB - 4)
    if arch == "qwen2_5_vl":
        return tf.Qwen2_5_VLConfig(
            text_config=dict(_TEXT, rope_scaling=_MROPE),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                               patch_size=4, spatial_merge_size=2, temporal_patch_size=2, window_size=16,
                               fullatt_block_indexes=[1]),
            image_token_id=VOCAB - 1, video_token_id=VOCAB - 2, vision_start_token_id=VOCAB - 3,
            vision_end_token_id=VOCAB - 4)
    if arch == "llava":
        return tf.LlavaConfig(
            text_config=dict(_TEXT, model_type="llama"),
            vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
                               projection_dim=32),
            image_token_id=VOCAB - 1)
    if arch in ("llava_dinov2", "llava_dinov2_gqa"):  # the samples/vlm layout: DINOv2 tower, last layer, CLS dropped
        text = _GQA_TEXT if arch == "llava_dinov2_gqa" else _TEXT
        return tf.LlavaConfig(
            text_config=dict(text, model_type="llama", tie_word_embeddings=True),
            vision_config=dict(model_type="dinov2", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               mlp_ratio=2, image_size=28, patch_size=7),
            image_token_id=VOCAB - 1, vision_feature_layer=-1, vision_feature_select_strategy="default",
            tie_word_embeddings=True)
    raise ValueError(f"no tiny config for {arch!r}; known: {', '.join(TINY_ARCHS)}")


TINY_ARCHS = ("llama", "qwen2", "gpt2", "bert", "qwen2_vl", "qwen2_5_vl", "llava", "llava_dinov2")
_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel",
            "bert": "BertModel", "qwen2_vl": "Qwen2VLForConditionalGeneration",
            "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "llava": "LlavaForConditionalGeneration",
            "llava_dinov2": "LlavaForConditionalGeneration", "llava_dinov2_gqa": "LlavaForConditionalGeneration",
            "llama_gqa": "LlamaForCausalLM",
            "qwen2_gqa": "Qwen2ForCausalLM"}


def tiny_config(arch: str):
    return _config(arch)


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A tiny model of `arch` with deterministic random weights, fp32, eval mode."""
    import transformers as tf

    config = _config(arch)
    torch.manual_seed(seed)
    return getattr(tf, _CLASSES[arch])(config).eval()


def save_tiny_model(arch: str, out_dir: str | Path, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    tiny_model(arch, seed).save_pretrained(out_dir)
    return out_dir


def save_char_tokenizer(model_dir: str | Path) -> Path:
    """Give a tiny text model a real tokenizer whose ids fit its VOCAB (characters 32..255 map to
    themselves; <pad>/<s>/</s>/<unk> = 0..3), built offline, so CLIs can run end to end on it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(i): i for i in range(32, VOCAB)}
    vocab.update({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.save_pretrained(model_dir)
    return Path(model_dir)
