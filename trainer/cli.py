"""`phm-train MODEL_DIR --out OUT_DIR …`: progressive PHM substitution with KD (pipeline.train)."""

from __future__ import annotations

import logging
import os

import click
from safetensors import SafetensorError

from phm.common.cliutil import FiniteFloatRange, OneLineCommand
from .distill import BASE_DTYPES, DistillConfig
from .parallel import PARALLEL_MODES
from .inject import ROLES, TOWERS, PHMConfig
from .pipeline import train


def _csv(choices):
    def convert(ctx, param, value):
        items = tuple(v.strip() for v in value.split(",") if v.strip())
        bad = [v for v in items if v not in choices]
        if bad or not items:
            raise click.BadParameter(f"expected a comma-separated subset of {', '.join(choices)}, got {value!r}")
        return items
    return convert


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("model_dir")
@click.option("--out", "out_dir", default=None, type=click.Path(), help="Checkpoint dir to write (required unless --plan).")
@click.option("--data", default=None, help="JSONL/TXT file, image+caption folder, or 'chatterbot'. "
              "Without it: data-free KD on text sampled from the teacher.")
@click.option("--data-free-samples", default=256, show_default=True, type=click.IntRange(1), help="Texts to sample.")
@click.option("--augment-lm", default=None, metavar="LM_DIR",
              help="Add this chat LM's sampled replies to the --data texts as more training text "
              "(e.g. sample:smollm2; for small corpora and encoders, see docs/trainer.md).")
@click.option("--augment-rounds", default=1, show_default=True, type=click.IntRange(1),
              help="Replies sampled per text with --augment-lm.")
@click.option("--bases", default=2, show_default=True, type=int, help="B per PHM layer (1..n²).")
@click.option("--n", "n", default=2, show_default=True, type=int, help="Hypercomplex dimension.")
@click.option("--top-k-b3", default=0, show_default=True, type=click.IntRange(0), help="Top K language layers get B=3.")
@click.option("--towers", default="language", show_default=True, callback=_csv(TOWERS), help="language,vision")
@click.option("--projections", default="gate,up,down", show_default=True, callback=_csv(ROLES))
@click.option("--init", type=click.Choice(["calibrated", "projection", "random"]), default="calibrated",
              show_default=True, help="Core init: activation-weighted ridge, weight projection, or random.")
@click.option("--steps", type=click.IntRange(1), default=None, help="Optimizer steps [default: 300].")
@click.option("--epochs", type=FiniteFloatRange(0, min_open=True), default=None,
              help="Passes over the data (instead of --steps).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1))
@click.option("--max-length", default=128, show_default=True, type=click.IntRange(2))
@click.option("--pack", is_flag=True, help="Causal LMs: pack the text into full --max-length windows "
              "(trains every position a long prompt reaches; short lines alone never do).")
@click.option("--group-by-length/--no-group-by-length", default=True, show_default=True,
              help="Batch texts of about the same length together (far less padding, so faster steps).")
@click.option("--lr", default=1e-4, show_default=True, type=FiniteFloatRange(0), help="LoRA / bias learning rate.")
@click.option("--core-lr", default=2e-3, show_default=True, type=FiniteFloatRange(0), help="PHM core learning rate.")
@click.option("--local-epochs", default=0, show_default=True, type=click.IntRange(0),
              help="Epochs of layer-wise local distillation on cached activations before the KD loop (0: off).")
@click.option("--local-batches", default=64, show_default=True, type=click.IntRange(0),
              help="Training batches the local stage caches activations of (0: all).")
@click.option("--hidden-weight", default=1.0, show_default=True, type=FiniteFloatRange(0),
              help="Weight of the per-layer hidden-state KD term.")
@click.option("--recon-weight", default=0.05, show_default=True, type=FiniteFloatRange(0),
              help="Weight of the per-linear reconstruction term (stage A).")
@click.option("--schedule", type=click.Choice(["progressive", "abrupt"]), default="progressive", show_default=True)
@click.option("--lora-r", default=8, show_default=True, type=click.IntRange(0), help="0 disables LoRA.")
@click.option("--checkpoint-every", default=100, show_default=True, type=click.IntRange(0))
@click.option("--log-every", default=10, show_default=True, type=click.IntRange(1), help="Steps between train_log entries.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--base-dtype", type=click.Choice(list(BASE_DTYPES)), default="float32", show_default=True,
              help="Frozen (teacher) weights' dtype; cores, PHM biases and LoRA stay fp32 masters.")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute each transformer layer in the backward "
              "(activations of one layer instead of all).")
@click.option("--parallel", type=click.Choice(list(PARALLEL_MODES)), default="ddp", show_default=True,
              help="Under torchrun: DDP (the model on every device) or FSDP2 (weights, gradients and AdamW "
              "state sharded over the devices).")
@click.option("--world-size", type=click.IntRange(1), default=None,
              help="--plan only: plan for this many data-parallel devices [default: torchrun's, else 1].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the run saved in OUT_DIR (same options).")
@click.option("--plan", is_flag=True, help="Print the run's memory plan (per item and stage, from the config on the "
              "meta device: no weight is read) and exit.")
@click.option("--device-gib", type=FiniteFloatRange(0, min_open=True), default=None,
              help="Memory of the training device: a run whose planned peak exceeds it is refused before any weight "
              "is loaded (--plan: the verdict).")
@click.option("-v", "--verbose", is_flag=True, help="Log every step's losses.")
def main(model_dir, out_dir, data, data_free_samples, augment_lm, augment_rounds, bases, n, top_k_b3, towers,
         projections, init, steps, epochs, batch_size, max_length, pack, group_by_length, lr, core_lr, local_epochs,
         local_batches, hidden_weight, recon_weight, schedule, lora_r, checkpoint_every, log_every, device,
         base_dtype, gradient_checkpointing, parallel, world_size, seed, resume, plan, device_gib, verbose):
    """Replace the MLPs of MODEL_DIR (a HF model dir, or sample:minilm / sample:smollm2) by PHM layers
    and distil them from the original model; write a PHM checkpoint dir to OUT_DIR."""
    rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 reports
    logging.basicConfig(level=logging.WARNING if rank else logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(message)s")
    import transformers

    transformers.utils.logging.disable_progress_bar()  # our own bar is the progress; keep errors one line
    if steps is not None and epochs is not None:
        raise click.ClickException("--steps and --epochs conflict: give one of them")
    if out_dir is None and not plan:
        raise click.ClickException("Missing option '--out' (the checkpoint dir to write)")
    try:
        phm = PHMConfig(n=n, num_bases=bases, towers=towers, projections=projections, top_k_b3=top_k_b3,
                        init="random" if init == "random" else "projection")
        cfg = DistillConfig(steps=steps or 300, batch_size=batch_size, max_length=max_length, pack=pack,
                            group_by_length=group_by_length, lr=lr, core_lr=core_lr, local_epochs=local_epochs,
                            local_batches=local_batches, hidden_weight=hidden_weight, recon_weight=recon_weight,
                            schedule=schedule, lora_r=lora_r,
                            calibrate_init=init == "calibrated", checkpoint_every=checkpoint_every,
                            log_every=log_every, device=device, seed=seed, base_dtype=base_dtype,
                            gradient_checkpointing=gradient_checkpointing, parallel=parallel)
        if plan:
            from .models import resolve_model_dir
            from .plan import plan_training

            size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
            click.echo(plan_training(resolve_model_dir(model_dir), phm, cfg, device_gib, world_size=size).table())
            return
        if world_size is not None:
            raise ValueError("--world-size applies to --plan; a run's world size is torchrun's --nproc-per-node")
        out = train(model_dir, out_dir, phm, cfg, data=data, data_free_samples=data_free_samples, resume=resume,
                    epochs=epochs, augment_lm=augment_lm, augment_rounds=augment_rounds, device_gib=device_gib)
    except (ValueError, FileExistsError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:  # disk full, file too large, permissions: nothing half-written (atomic writes)
        where = f" ({e.filename})" if e.filename else ""
        raise click.ClickException(f"I/O error while training into {out_dir}: {e.strerror or e}{where}") from None
    except SafetensorError as e:  # safetensors reports its I/O errors (EFBIG, ENOSPC) as its own type
        raise click.ClickException(f"I/O error while training into {out_dir}: {str(e).splitlines()[0]}") from None
    if rank == 0:
        click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
