"""`phm-run ARTIFACTS_DIR --prompt TEXT [--image PATH]`: generate text from an exported artifacts dir.

Streams the generated text to stdout as it is generated, then one timing line on stderr (startup:
command start to the first prefill; prefill ms, decode tokens/s, peak RSS; peak device memory on a
GPU backend), or prints one JSON object with `--json`. Generation stays inside the exported context
(the manifest's, set by `phm-export --context`): a prompt longer than it is refused, and
--max-new-tokens past it is capped with a warning. Ctrl-C stops generation: what was printed stays,
and the exit status is 130. Backends: `ort` (ONNX Runtime: CPU, or its CUDA EP where installed; text
decoders, and Qwen2(.5)-VL and LLaVA with an image) and `trt` (the TensorRT decoder engine
phm-export builds where TensorRT is importable). An image prompt is the image first, then the text,
or the image at the placeholder the prompt holds (`VisionSpec.image_prompt`). `--chat` wraps the
prompt as one user turn in the model's chat template (with an image: the processor's template, the
image inside the user turn); without it the prompt is used as written. Every known failure is one
line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click
import numpy as np

from phm.common.cliutil import FiniteFloatRange, OneLineCommand

from .backend import BackendError, read_manifest
from .generate import GenerationConfig, generate, stop_ids
from .sampling import SamplingConfig
from .tokenizer import TokenizerError, load_tokenizer
from .vlm import VisionSpec, check_image_file, image_processor, load_image


def _tokenizer(artifacts: Path):
    try:
        return load_tokenizer(artifacts / "hf")
    except TokenizerError as e:
        raise click.ClickException(str(e)) from None


def _backend(artifacts: Path, kind: str, threads: int | None, manifest: dict, mapped: bool = False):
    if kind == "trt":
        if mapped:
            raise click.ClickException("--mapped-weights is an ONNX Runtime option (--backend ort)")
        from .trt_backend import TrtBackend

        return TrtBackend.from_artifacts(artifacts)
    from .ort_backend import OrtBackend

    return OrtBackend.from_artifacts(artifacts, threads=threads, manifest=manifest, prepack=not mapped)


def exported_context(manifest: dict) -> int | None:
    """Tokens (prompt + generated) the artifacts were exported for: the memory plan's context, which
    is `phm-export --context` clipped to the model's positions (None: not recorded)."""
    context = (manifest.get("memory_plan") or {}).get("context")
    return context if isinstance(context, int) and context > 0 else None


def _fit_context(prompt_tokens: int, max_new_tokens: int, context: int | None) -> int:
    """max_new_tokens within the context; a prompt that does not fit is an error."""
    if context is None:
        return max_new_tokens
    if prompt_tokens >= context:
        raise click.ClickException(f"the prompt is {prompt_tokens} tokens but the exported context is {context} "
                                   "(prompt + generated tokens): shorten the prompt or re-export with a larger "
                                   "phm-export --context")
    room = context - prompt_tokens
    if max_new_tokens > room:
        click.echo(f"Warning: --max-new-tokens {max_new_tokens} capped at {room}: the prompt's {prompt_tokens} "
                   f"tokens leave {room} of the exported context of {context}", err=True)
    return min(max_new_tokens, room)


class _Streamer:
    """Prints the text of the tokens so far as it grows (a multi-byte character is held back until its
    last token arrives), stopping at a stop id like generate does."""

    def __init__(self, tok, stops: tuple):
        self.tok, self.stops, self.ids, self.printed, self.stopped = tok, set(stops), [], "", False
        self.wrote = False  # set before the first write: an interrupt inside it still ends the line

    def __call__(self, ids: np.ndarray) -> None:
        token = int(ids[0])
        if self.stopped:
            return
        self.stopped = token in self.stops
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(self.printed):
            return
        self.wrote = True
        click.echo(text[len(self.printed):], nl=False)
        self.printed = text

    def finish(self, text: str) -> None:
        click.echo(text[len(self.printed):] if text.startswith(self.printed) else "")


def _chat(tok, prompt: str) -> str:
    """The prompt as one user turn in the tokenizer's chat template, ready for the assistant's answer
    (instruct models such as SmolLM2-Instruct answer far better inside their template). The template
    writes its own special tokens, so the caller tokenizes without adding more."""
    if not getattr(tok, "chat_template", None):
        raise click.ClickException("--chat: this model's tokenizer has no chat template; pass the formatted prompt")
    return tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)


def _processor_template(hf_dir: Path) -> str | None:
    """The processor's own chat template where the model ships one apart from the tokenizer's
    (chat_template.json, or processor_config.json's "chat_template"), as HF processors read it."""
    for name in ("chat_template.json", "processor_config.json"):
        path = hf_dir / name
        if path.is_file():
            try:
                template = json.loads(path.read_text()).get("chat_template")
            except (ValueError, AttributeError):
                continue
            if isinstance(template, str) and template:
                return template
    return None


def _image_chat(hf_dir: Path, tok, prompt: str) -> str:
    """An image + text user turn as the model's processor renders it (HF `processor.apply_chat_template`,
    without loading the processor): the image placeholder sits inside the user turn where the template
    puts it, and VisionSpec.image_prompt then expands it to the image's tokens."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    template = _processor_template(hf_dir) or getattr(tok, "chat_template", None)
    if not template:
        raise click.ClickException("--chat: this model has no chat template; pass the formatted prompt")
    return tok.apply_chat_template(messages, add_generation_prompt=True, chat_template=template)


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifacts", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="Prompt text.")
@click.option("--image", type=click.Path(path_type=Path), default=None, help="Image for a VLM artifact.")
@click.option("--backend", type=click.Choice(["ort", "trt"]), default="ort", show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--temperature", type=FiniteFloatRange(min=0), default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-p", type=FiniteFloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--mapped-weights", is_flag=True,
              help="ONNX Runtime reads the weights from the memory-mapped model.onnx.data as they are instead "
                   "of repacking them at start: starts in a fraction of a second and keeps no private copy of "
                   "the weights; decodes slower on CPUs (docs/runtime.md).")
@click.option("--chat", is_flag=True, help="Wrap the prompt as one user turn with the model's chat template.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text + timing line.")
@click.option("--verify", is_flag=True, help="Check every artifact file's sha256 against manifest.json before "
              "loading (sizes are always checked).")
def main(artifacts, prompt, image, backend, max_new_tokens, temperature, top_p, seed, threads, mapped_weights, chat,
         as_json, verify):
    """Generate text from an artifacts dir written by phm-export."""
    started = time.perf_counter()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        manifest = read_manifest(artifacts, verify=verify)
    except BackendError as e:
        raise click.ClickException(str(e)) from None
    if not (artifacts / "decoder.onnx").is_file():
        raise click.ClickException(f"{artifacts} holds no decoder graph: phm-run generates text from decoder models")
    try:
        vision = VisionSpec.from_artifacts(artifacts, manifest)
        if image is not None:
            check_image_file(image)  # the file's own faults first, then whether the model takes images
            if vision is None:
                raise click.ClickException("an image was given but this artifact is a text-only model")
        picture = load_image(image) if image is not None else None
        engine = _backend(artifacts, backend, threads, manifest, mapped_weights)
        tok = _tokenizer(artifacts)
        prompt_text = prompt
        if chat:
            prompt_text = _image_chat(artifacts / "hf", tok, prompt) if image is not None else _chat(tok, prompt)
        ids = tok.encode(prompt_text, add_special_tokens=not chat)
        images = None
        if image is not None:
            images = vision.image_inputs(image_processor(artifacts / "hf"), picture)
            ids = vision.image_prompt(ids, images.get("image_grid_thw"))
        if not ids:
            raise click.ClickException("the prompt is empty after tokenization")
        max_new_tokens = _fit_context(len(ids), max_new_tokens, exported_context(manifest))
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, stop_ids=stop_ids(tok, artifacts / "hf"),
                               pad_id=tok.pad_token_id or 0, sampling=SamplingConfig(temperature, top_p, seed))
        streamer = None if as_json else _Streamer(tok, cfg.stop_ids)
        try:
            result = generate(engine, np.array([ids], dtype=np.int64), cfg, images=images, on_token=streamer,
                              started=started)
        except KeyboardInterrupt:
            if streamer is not None and streamer.wrote:
                click.echo()  # end the streamed line: what was printed stays
            raise
    except (BackendError, ValueError, KeyError) as e:
        raise click.ClickException(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    text = tok.decode(result.tokens[0], skip_special_tokens=True)
    t = result.timings
    if as_json:
        click.echo(json.dumps({"text": text, "tokens": result.tokens[0].tolist(), "prompt_ids": ids,
                               "backend": engine.name, "device": engine.device, **t.to_dict()}))
    else:
        streamer.finish(text)
        click.echo(f"[{engine.name} {engine.device}] {t.line()}", err=True)
