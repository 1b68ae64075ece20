"""`phm-export MODEL_DIR [--out DIR] [--fp16] [--int8 | --int4] [--target T --context N] …`: checkpoint dir → artifacts dir."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from phm.common.cliutil import FiniteFloatRange, OneLineCommand

from .config import CALIB_METHODS, INT4_ACCURACY, INT4_GROUPS, INT4_METHODS, TARGETS, ExportConfig, Int4Config, Int8Config


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="artifacts dir [default: MODEL_DIR-onnx]")
@click.option("--fp16", is_flag=True, help="fp16 graph (norm/softmax statistics stay fp32)")
@click.option("--int8", is_flag=True, help="INT8: Q/DQ attention matmuls + INT8 PHM cores; writes report.md")
@click.option("--int4", is_flag=True, help="INT4 weight-only (W4A16): blocked INT4 dense linears + INT4 PHM cores; "
              "writes report.md")
@click.option("--int4-group", type=click.Choice([str(g) for g in INT4_GROUPS]), default=str(Int4Config.group),
              show_default=True, help="with --int4, the block of input channels sharing a scale")
@click.option("--int4-method", type=click.Choice(INT4_METHODS), default=Int4Config.method, show_default=True,
              help="with --int4, awq (activation-aware channel scales from --calib-data), gptq (second-order rounding "
                   "from --calib-data) or rtn (round to nearest)")
@click.option("--int4-lm-head", is_flag=True, help="with --int4, quantize the LM head too")
@click.option("--int4-accuracy", type=click.Choice([str(a) for a in INT4_ACCURACY]), default=str(Int4Config.accuracy),
              show_default=True, help="with --int4, ONNX Runtime's MatMulNBits arithmetic: 1 fp32 on the dequantized "
              "weights (W4A16), 4 INT8 activations per block (faster on CPUs; report.md measures it)")
@click.option("--calib-data", type=click.Path(), default=None,
              help="calibration data for --int8/--int4: folder, .jsonl or .txt [default: the shipped prompts]")
@click.option("--calib-method", type=click.Choice(CALIB_METHODS), default=Int8Config.calib_method, show_default=True,
              help="activation calibrator for --int8")
@click.option("--report-data", type=click.Path(), default=None,
              help="with --int8/--int4 on a VLM: image+prompt pairs (folder or .jsonl) whose greedy answers the report "
                   "compares [default: the calibration data's images]")
@click.option("--int8-lm-head", is_flag=True, help="with --int8, quantize the LM head too")
@click.option("--int8-weights-only", is_flag=True,
              help="with --int8, INT8 weights everywhere and float activations (no activation Q/DQ, W8A16): "
                   "the more accurate INT8 mode, smaller but without INT8 GEMMs")
@click.option("--no-int8-rotation", "no_rotation", is_flag=True,
              help="with --int8, quantize the attention inputs as they are instead of rotated (x·Q, a Hadamard⊗DCT "
                   "rotation computed in the graph; docs/int8.md § Rotation)")
@click.option("--strict", is_flag=True, help="fail if any PHM-configured MLP is not rewritten")
@click.option("--target", type=click.Choice(list(TARGETS)), default=ExportConfig.target, show_default=True,
              help="device the memory plan, engine profile and commands are for (Jetson Orin modules: sm_87)")
@click.option("--context", type=click.IntRange(1), default=ExportConfig.max_sequence, show_default=True,
              help="tokens of KV cache (past + new) to plan and profile for; clipped to the model's positions")
@click.option("--device-gib", type=FiniteFloatRange(0, min_open=True), default=None,
              help="the target's memory if not the largest variant (e.g. 4 for an Orin Nano 4GB)")
@click.option("--min-pixels", type=click.IntRange(1), default=None,
              help="Qwen VLMs: fewest pixels an image is resized to (and the vision engine's profile "
                   "minimum) [default: the model's image processor's]")
@click.option("--max-pixels", type=click.IntRange(1), default=None,
              help="Qwen VLMs: most pixels an image is resized to (the vision engine's profile maximum; "
                   "attention memory grows with its square) [default: the model's image processor's]")
@click.option("--require-engine", is_flag=True, help="fail (non-zero) where TensorRT cannot build engines")
@click.option("--overwrite", is_flag=True, help="replace a non-empty output dir")
@click.option("--verify", is_flag=True, help="instead of exporting: check that the artifacts dir MODEL_DIR (e.g. a "
              "copy) holds every file of its manifest.json with its size and sha256")
@click.option("-v", "--verbose", is_flag=True, help="log every MLP and pass count")
def main(model_dir, out_dir, fp16, int8, int4, int4_group, int4_method, int4_lm_head, int4_accuracy, calib_data, calib_method, report_data, int8_lm_head, int8_weights_only,
         no_rotation, strict, target, context, device_gib, min_pixels, max_pixels, require_engine, overwrite,
         verify, verbose):
    """Export a PHM checkpoint (or a plain Hugging Face model dir) to ONNX + TensorRT artifacts."""
    if verify:
        _verify(model_dir, out_dir)
        return
    from rich.console import Console
    from rich.logging import RichHandler

    console = Console(stderr=True)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_time=False, show_path=False)])
    try:
        if int8 and int4:
            raise ValueError("--int8 and --int4 are exclusive: choose one weight precision")
        ctx = click.get_current_context()
        only = {"--int8": {"--int8-lm-head": int8_lm_head, "--int8-weights-only": int8_weights_only,
                           "--no-int8-rotation": no_rotation,
                           "--calib-method": ctx.get_parameter_source("calib_method").name != "DEFAULT"},
                "--int4": {"--int4-lm-head": int4_lm_head,
                           "--int4-group": ctx.get_parameter_source("int4_group").name != "DEFAULT",
                           "--int4-method": ctx.get_parameter_source("int4_method").name != "DEFAULT",
                           "--int4-accuracy": ctx.get_parameter_source("int4_accuracy").name != "DEFAULT"},
                "--int8 or --int4": {"--calib-data": calib_data is not None, "--report-data": report_data is not None}}
        chosen = {"--int8": int8, "--int4": int4, "--int8 or --int4": int8 or int4}
        for mode, flags in only.items():
            unused = [flag for flag, given in flags.items() if given and not chosen[mode]]
            if unused:
                raise ValueError(f"{unused[0]} is only used with {mode}")
        quant8 = Int8Config(calib_data=calib_data, calib_method=calib_method, report_data=report_data,
                            lm_head=int8_lm_head, activations=not int8_weights_only,
                            rotate=not no_rotation) if int8 else None
        quant4 = Int4Config(group=int(int4_group), method=int4_method, lm_head=int4_lm_head, calib_data=calib_data,
                            report_data=report_data, accuracy=int(int4_accuracy)) if int4 else None
        config = ExportConfig(fp16=fp16, int8=quant8, int4=quant4, strict=strict, target=target,
                              device_gib=device_gib, max_sequence=context,
                              opt_sequence=min(ExportConfig.opt_sequence, context),
                              min_pixels=min_pixels, max_pixels=max_pixels,
                              require_engine=require_engine, overwrite=overwrite)
        from .api import export_model

        out_dir = out_dir or model_dir.with_name(model_dir.name + "-onnx")
        with console.status("exporting") as status:
            out = export_model(model_dir, config, out_dir, on_stage=lambda msg: status.update(msg))
    except (ValueError, FileExistsError) as e:
        raise click.ClickException(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    except OSError as e:  # disk full, file too large, permissions: nothing is left behind (atomic dir)
        where = f" ({e.filename})" if e.filename else ""
        raise click.ClickException(f"I/O error while exporting to {out_dir}: {e.strerror or e}{where}") from None
    click.echo(out)


def _verify(artifacts: Path, out_dir: Path | None) -> None:
    from phm.common.artifacts import ArtifactError, read_manifest, verify_files

    if out_dir is not None:
        raise click.ClickException("--verify checks an existing artifacts dir and writes nothing: drop --out")
    try:
        count = verify_files(artifacts, read_manifest(artifacts), hashes=True)
    except ArtifactError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{artifacts}: {count} files match manifest.json (sizes and sha256)")


if __name__ == "__main__":
    main()
