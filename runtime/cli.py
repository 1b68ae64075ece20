"""`phm-run ARTIFACTS_DIR --prompt TEXT`: generate text from an exported artifacts dir.

Text decoders on ONNX Runtime (`--backend ort`) are supported end to end; `--backend trt` needs
TensorRT and the engine phm-export builds where TensorRT is importable. Image prompts through the
CLI are not wired yet (the VLM path exists as library helpers in phm.export.vlm).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
import numpy as np

from .backend import BackendError
from .generate import GenerationConfig, generate
from .sampling import SamplingConfig


def _tokenizer(artifacts: Path):
    from transformers import AutoTokenizer

    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((artifacts / "hf" / n).is_file() for n in names):
        raise click.ClickException(f"{artifacts}/hf holds no tokenizer: pass a model exported with its tokenizer")
    try:
        return AutoTokenizer.from_pretrained(artifacts / "hf", local_files_only=True)
    except (OSError, ValueError, TypeError):
        raise click.ClickException(f"{artifacts}/hf holds no tokenizer: pass a model exported with its tokenizer") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifacts", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="Prompt text.")
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Image for a VLM artifact.")
@click.option("--backend", type=click.Choice(["ort", "trt"]), default="ort", show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text + timing line.")
def main(artifacts, prompt, image, backend, max_new_tokens, temperature, top_p, seed, as_json):
    """Generate text from an artifacts dir written by phm-export."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    manifest_path = artifacts / "manifest.json"
    if not manifest_path.is_file():
        raise click.ClickException(f"{artifacts} is not an artifacts dir (no manifest.json)")
    if not (artifacts / "decoder.onnx").is_file():
        raise click.ClickException(f"{artifacts} holds no decoder graph: phm-run generates text from decoder models")
    if image is not None:
        if not (artifacts / "vision.onnx").is_file():
            raise click.ClickException("an image was given but this artifact is a text-only model")
        raise click.ClickException("image prompts are not wired into phm-run yet (library: phm.export.vlm)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise click.ClickException(f"{manifest_path} is not valid JSON: re-export the model") from None
    if backend == "trt":
        from .trt_backend import engine_path, import_tensorrt, required_plugins

        try:
            required_plugins(manifest)  # before TensorRT is imported: testable without it
        except BackendError as e:
            raise click.ClickException(str(e)) from None
        if engine_path(artifacts, manifest) is None:
            raise click.ClickException("--backend trt: no TensorRT engine in this artifacts dir (build it with "
                                       "commands.sh on the target, docs/jetson.md); use --backend ort")
        try:
            import_tensorrt()
        except BackendError as e:
            raise click.ClickException(str(e)) from None
        raise click.ClickException("--backend trt: generation through TensorRT engines is not wired into phm-run yet")
    if (artifacts / "embed.onnx").is_file():
        raise click.ClickException("this VLM artifact's decoder takes inputs_embeds; phm-run drives text decoders only so far")
    from .ort_backend import OrtBackend

    tok = _tokenizer(artifacts)
    try:
        engine = OrtBackend(artifacts / "decoder.onnx")
        ids = np.array([tok(prompt)["input_ids"]], dtype=np.int64)
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, stop_ids=tuple(i for i in [tok.eos_token_id] if i is not None),
                               pad_id=tok.pad_token_id or 0, sampling=SamplingConfig(temperature, top_p, seed))
        result = generate(engine, ids, cfg)
    except (BackendError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    text = tok.decode(result.tokens[0], skip_special_tokens=True)
    t = result.timings
    if as_json:
        click.echo(json.dumps({"text": text, "tokens": result.tokens[0].tolist(), "prefill_ms": t.prefill_ms,
                               "decode_tokens_per_s": t.decode_tokens_per_s, "peak_rss_mb": t.peak_rss_mb}))
    else:
        click.echo(text)
        click.echo(f"[{engine.name}] {t.line()}", err=True)
