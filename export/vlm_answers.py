"""Answer agreement of a VLM export on image+prompt pairs: the VLM part of the INT8 report.

    answers = greedy_answers(source, model_dir, art_dir, vision_entry, samples, tokenizer, vocab)
    answers["int8"][i] == answers["fp32"][i]     # token for token: the same caption / answer

Each sample's prompt (its `prompt` field, else its `text`) is used as written, as `phm-run` uses
it: write it in the model's chat template with the image placeholder where the model expects it
(LLaVA: `<image>`; a prompt without one gets the image first). It is laid out with the image's tokens
by the runtime's `VisionSpec` and decoded greedily, at most ANSWER_TOKENS tokens, by one loop
(`phm.runtime.generate`) over three backends:
  fp32  the PyTorch model (`TorchBackend` over the exporter's `ModelSource.streaming()`: weights read
        from the checkpoint module by module), the reference;
  fp16  the same model at fp16 (PyTorch, CPU);
  int8  the exported graphs in ONNX Runtime (`OrtBackend`: vision.onnx → embed.onnx → decoder.onnx,
        what phm-run runs), read from the export's staging dir before the manifest exists.
A model dir without a tokenizer (the tiny test models) gets the prompt's UTF-8 bytes mod the
vocabulary as ids, the image-token ids left out.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch

from phm.runtime.generate import GenerationConfig, generate, stop_ids
from phm.runtime.ort_backend import OrtBackend
from phm.runtime.torch_backend import TorchBackend
from phm.runtime.vlm import VisionSpec, image_processor

__all__ = ["ANSWER_TOKENS", "answer_agreement", "greedy_answers"]

ANSWER_TOKENS = 16


def _prompt_ids(spec: VisionSpec, text: str, tokenizer, vocab: int, grid) -> list[int]:
    if tokenizer is not None:
        ids = list(tokenizer(text)["input_ids"])
    else:
        special = {spec.image_token_id, spec.vision_start_token_id, spec.vision_end_token_id}
        ids = [i for i in (b % vocab for b in text.encode("utf-8")) if i not in special]
    return spec.image_prompt(ids, grid)


def greedy_answers(source, model_dir: Path, art_dir: Path, graphs: dict, samples: list, tokenizer,
                   vocab: int, max_new_tokens: int = ANSWER_TOKENS, on_sample=None,
                   processor=None, int4_accuracy: int = 1) -> dict[str, list[list[int]]]:
    """{"fp32" | "fp16" | "int8": one greedy answer (token ids, stop token included) per image sample}.
    `source`: the exporter's ModelSource; `graphs`: the manifest's graph entries (the files phm-run
    loads; the vision entry's LLaVA image size and tokens, Qwen pixel range); `processor`: the model dir's image processor if the
    caller already loaded it. One precision after the other (each holds its own weights)."""
    spec = VisionSpec.from_config(json.loads((model_dir / "config.json").read_text()), graphs["vision"])
    ort = {kind: art_dir / entry["ort_file"] for kind, entry in graphs.items()}
    processor = processor or image_processor(model_dir)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, stop_ids=stop_ids(tokenizer, model_dir),
                           pad_id=getattr(tokenizer, "pad_token_id", None) or 0)
    prompts = []
    for sample in samples:
        images = spec.image_inputs(processor, sample.image)  # Qwen: pixel_values + image_grid_thw
        ids = np.array([_prompt_ids(spec, sample.prompt or sample.text, tokenizer, vocab,
                                    images.get("image_grid_thw"))], np.int64)
        prompts.append((ids, images))
    backends = {"fp32": lambda: _torch(source.streaming()), "fp16": lambda: _torch(source.streaming(torch.float16)),
                "int8": lambda: contextlib.nullcontext(OrtBackend(ort["decoder"], vision=spec, embed_path=ort.get("embed"),
                                                                  vision_path=ort["vision"], int4_accuracy=int4_accuracy))}
    out = {name: [] for name in backends}
    for name, backend in backends.items():
        with backend() as b:
            for ids, images in prompts:
                out[name].append(generate(b, ids, cfg, images=images).tokens[0].tolist())
                if on_sample is not None:
                    on_sample()
    return out


@contextlib.contextmanager
def _torch(streaming):
    with streaming as model:
        yield TorchBackend(model)


def answer_agreement(reference: list[list[int]], answers: list[list[int]]) -> float:
    """Fraction of answers equal to the reference's token for token.

    >>> answer_agreement([[1, 2], [3]], [[1, 2], [4]])
    0.5
    """
    if len(reference) != len(answers) or not reference:
        raise ValueError("answer lists of different lengths or empty")
    return sum(a == r for a, r in zip(answers, reference)) / len(reference)
