"""`phm-export MODEL_DIR [--out DIR] [--fp16] [--int8] …`: checkpoint dir → artifacts dir."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from .config import CALIB_METHODS, TARGETS, ExportConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="artifacts dir [default: MODEL_DIR-onnx]")
@click.option("--fp16", is_flag=True, help="fp16 graph (norm/softmax statistics stay fp32)")
@click.option("--int8", is_flag=True, help="INT8: Q/DQ attention matmuls + INT8 PHM cores; writes report.md")
@click.option("--calib-data", type=click.Path(), default=None,
              help="calibration data for --int8: folder, .jsonl or .txt [default: the shipped prompts]")
@click.option("--calib-method", type=click.Choice(CALIB_METHODS), default="percentile", show_default=True,
              help="activation calibrator for --int8")
@click.option("--int8-lm-head", is_flag=True, help="with --int8, quantize the LM head too")
@click.option("--strict", is_flag=True, help="fail if any PHM-configured MLP is not rewritten")
@click.option("--target", type=click.Choice(sorted(TARGETS)), default="orin", show_default=True)
@click.option("--require-engine", is_flag=True, help="fail (non-zero) where TensorRT cannot build engines")
@click.option("--overwrite", is_flag=True, help="replace a non-empty output dir")
@click.option("-v", "--verbose", is_flag=True, help="log every MLP and pass count")
def main(model_dir, out_dir, fp16, int8, calib_data, calib_method, int8_lm_head, strict, target, require_engine,
         overwrite, verbose):
    """Export a PHM checkpoint (or a plain Hugging Face model dir) to ONNX + TensorRT artifacts."""
    from rich.console import Console
    from rich.logging import RichHandler

    console = Console(stderr=True)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_time=False, show_path=False)])
    try:
        config = ExportConfig(fp16=fp16, int8=int8, calib_data=calib_data, calib_method=calib_method,
                              int8_lm_head=int8_lm_head, strict=strict, target=target,
                              require_engine=require_engine, overwrite=overwrite)
        from .api import export_model

        with console.status("exporting") as status:
            out = export_model(model_dir, config, out_dir or model_dir.with_name(model_dir.name + "-onnx"),
                               on_stage=lambda msg: status.update(msg))
    except (ValueError, FileExistsError, OSError) as e:
        raise click.ClickException(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    click.echo(out)


if __name__ == "__main__":
    main()
