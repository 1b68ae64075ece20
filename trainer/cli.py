"""`phm-train MODEL_DIR --out OUT_DIR …` or `phm-train --recipe FILE.yaml …`: progressive PHM
substitution with KD (pipeline.train). Every option's default is the library's (recipe.py), so the
settings are: library defaults, then the recipe's, then the flags given on the command line."""

from __future__ import annotations

import logging
import os

import click
from safetensors import SafetensorError

from phm.common.cliutil import FiniteFloatRange, OneLineCommand
from click.core import ParameterSource

from .distill import BASE_DTYPES, DistillConfig
from .parallel import PARALLEL_MODES, env_world_size
from .recipe import INITS, RECIPE_NAME, dump_recipe, load_recipe, settings
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


_D, _P = DistillConfig(), PHMConfig()
# CLI parameter → settings key (recipe.py), where the names differ
_RENAMED = {"bases": "num_bases"}


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("model_dir", required=False)
@click.option("--recipe", default=None, type=click.Path(), help="YAML recipe with every setting (recipes/*.yaml); "
              "flags given here override single fields.")
@click.option("--print-recipe", is_flag=True, help="Print the full effective recipe (YAML) and exit.")
@click.option("--out", "out_dir", default=None, type=click.Path(), help="Checkpoint dir to write (required unless --plan).")
@click.option("--data", default=None, help="JSONL (text or LLaVA conversations) / JSON / TXT / parquet / arrow "
              "file, image+caption or Flickr8k folder, or 'chatterbot'. Without it: data-free KD on text sampled "
              "from the teacher.")
@click.option("--data-free-samples", default=256, show_default=True, type=click.IntRange(1), help="Texts to sample.")
@click.option("--augment-lm", default=None, metavar="LM_DIR",
              help="Add this chat LM's sampled replies to the --data texts as more training text "
              "(e.g. sample:smollm2; for small corpora and encoders, see docs/trainer.md).")
@click.option("--augment-rounds", default=1, show_default=True, type=click.IntRange(1),
              help="Replies sampled per text with --augment-lm.")
@click.option("--holdout", default=_D.holdout, show_default=True, type=FiniteFloatRange(0, 0.9),
              help="Fraction of the --data texts held out (by hash) from training, for --eval-every.")
@click.option("--chat-template", is_flag=True, help="Train on each text as one user turn of the model's chat template.")
@click.option("--bases", default=_P.num_bases, show_default=True, type=int, help="B per PHM layer (1..n²).")
@click.option("--n", "n", default=_P.n, show_default=True, type=int, help="Hypercomplex dimension.")
@click.option("--top-k-b3", default=_P.top_k_b3, show_default=True, type=click.IntRange(0),
              help="Top K language layers get B=3.")
@click.option("--towers", default=",".join(_P.towers), show_default=True, callback=_csv(TOWERS), help="language,vision")
@click.option("--projections", default=",".join(_P.projections), show_default=True, callback=_csv(ROLES))
@click.option("--target-size", type=FiniteFloatRange(0, 1, min_open=True), default=None,
              help="Budget mode: choose B per MLP block from measured sensitivity so that the model keeps this "
              "fraction of its parameters (e.g. 0.6).")
@click.option("--target-gb", type=FiniteFloatRange(0, min_open=True), default=None,
              help="Budget mode: … so that its weights take this many GB at 16 bits.")
@click.option("--init", type=click.Choice(INITS), default="calibrated",
              show_default=True, help="Core init: activation-weighted ridge, weight projection, or random.")
@click.option("--steps", type=click.IntRange(1), default=_D.steps, show_default=True, help="Optimizer steps.")
@click.option("--epochs", type=FiniteFloatRange(0, min_open=True), default=None,
              help="Passes over the data (instead of --steps).")
@click.option("--batch-size", default=_D.batch_size, show_default=True, type=click.IntRange(1),
              help="Global batch (split over torchrun's processes).")
@click.option("--max-length", default=_D.max_length, show_default=True, type=click.IntRange(2))
@click.option("--pack", is_flag=True, help="Causal LMs: pack the text into full --max-length windows "
              "(trains every position a long prompt reaches; short lines alone never do).")
@click.option("--stream", is_flag=True, help="Read the --data files (.parquet/.arrow/.jsonl text) as the run goes "
              "instead of tokenizing them all first (corpora larger than memory; give --steps).")
@click.option("--group-by-length/--no-group-by-length", default=_D.group_by_length, show_default=True,
              help="Batch texts of about the same length together (far less padding, so faster steps).")
@click.option("--lr", default=_D.lr, show_default=True, type=FiniteFloatRange(0), help="LoRA / bias learning rate.")
@click.option("--core-lr", default=_D.core_lr, show_default=True, type=FiniteFloatRange(0), help="PHM core learning rate.")
@click.option("--local-epochs", default=_D.local_epochs, show_default=True, type=click.IntRange(0),
              help="Epochs of layer-wise local distillation on cached activations before the KD loop (0: off).")
@click.option("--local-batches", default=_D.local_batches, show_default=True, type=click.IntRange(0),
              help="Training batches the local stage caches activations of (0: all).")
@click.option("--hidden-weight", default=_D.hidden_weight, show_default=True, type=FiniteFloatRange(0),
              help="Weight of the per-layer hidden-state KD term.")
@click.option("--recon-weight", default=_D.recon_weight, show_default=True, type=FiniteFloatRange(0),
              help="Weight of the per-linear reconstruction term (stage A).")
@click.option("--schedule", type=click.Choice(["progressive", "abrupt"]), default=_D.schedule, show_default=True)
@click.option("--lora-r", default=_D.lora_r, show_default=True, type=click.IntRange(0), help="0 disables LoRA.")
@click.option("--eval-every", default=_D.eval_every, show_default=True, type=click.IntRange(0),
              help="Evaluate the PHM-only student on the held-out texts every N steps (needs --holdout; 0: off); "
              "the best evaluated weights are what is saved.")
@click.option("--checkpoint-every", default=_D.checkpoint_every, show_default=True, type=click.IntRange(0))
@click.option("--log-every", default=_D.log_every, show_default=True, type=click.IntRange(1),
              help="Steps between train_log entries.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=_D.device, show_default=True)
@click.option("--base-dtype", type=click.Choice(list(BASE_DTYPES)), default=_D.base_dtype, show_default=True,
              help="Frozen (teacher) weights' dtype; cores, PHM biases and LoRA stay fp32 masters.")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute each transformer layer in the backward "
              "(activations of one layer instead of all).")
@click.option("--parallel", type=click.Choice(list(PARALLEL_MODES)), default=_D.parallel, show_default=True,
              help="Under torchrun: DDP (the model on every device) or FSDP2 (weights, gradients and AdamW "
              "state sharded over the devices).")
@click.option("--world-size", type=click.IntRange(1), default=None,
              help="--plan only: plan for this many data-parallel devices [default: torchrun's, else 1].")
@click.option("--seed", default=_D.seed, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the run saved in OUT_DIR (same options).")
@click.option("--plan", is_flag=True, help="Print the run's memory plan (per item and stage, from the config on the "
              "meta device: no weight is read) and exit.")
@click.option("--device-gib", type=FiniteFloatRange(0, min_open=True), default=None,
              help="Memory of the training device: a run whose planned peak exceeds it is refused before any weight "
              "is loaded (--plan: the verdict).")
@click.option("-v", "--verbose", is_flag=True, help="Log every step's losses.")
@click.pass_context
def main(ctx, model_dir, recipe, print_recipe, out_dir, resume, plan, device_gib, world_size, verbose, **flags):
    """Replace the MLPs of MODEL_DIR (a HF model dir, or sample:minilm / sample:smollm2; or the
    recipe's model.path) by PHM layers and distil them from the original model; write a PHM
    checkpoint dir to OUT_DIR."""
    rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 reports
    logging.basicConfig(level=logging.WARNING if rank else logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(message)s")
    import transformers

    transformers.utils.logging.disable_progress_bar()  # our own bar is the progress; keep errors one line
    given = {name for name in flags if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    if {"steps", "epochs"} <= given:
        raise click.ClickException("--steps and --epochs conflict: give one of them")
    try:
        values = load_recipe(recipe) if recipe else {}
        if "epochs" in given:  # the one setting that replaces another
            values.pop("steps", None)
        values.update({_RENAMED.get(name, name): flags[name] for name in given})
        if model_dir is not None:
            values["model_dir"] = model_dir
        run = settings(values)
        if print_recipe:
            click.echo(dump_recipe(run), nl=False)
            return
        if run.model_dir is None:
            raise ValueError("no model: give MODEL_DIR or a recipe with model.path")
        if out_dir is None and not plan:
            raise ValueError("Missing option '--out' (the checkpoint dir to write)")
        if plan:
            from .models import resolve_model_dir
            from .plan import plan_training

            size = world_size or env_world_size()
            click.echo(plan_training(resolve_model_dir(run.model_dir), run.phm, run.distill, device_gib,
                                     world_size=size).table())
            return
        if world_size is not None:
            raise ValueError("--world-size applies to --plan; a run's world size is torchrun's --nproc-per-node")
        out = train(run.model_dir, out_dir, run.phm, run.distill, resume=resume, device_gib=device_gib,
                    recipe_text=dump_recipe(run), **run.train_kwargs())
    except (ValueError, FileExistsError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:  # disk full, file too large, permissions: nothing half-written (atomic writes)
        where = f" ({e.filename})" if e.filename else ""
        raise click.ClickException(f"I/O error while training into {out_dir}: {e.strerror or e}{where}") from None
    except SafetensorError as e:  # safetensors reports its I/O errors (EFBIG, ENOSPC) as its own type
        raise click.ClickException(f"I/O error while training into {out_dir}: {str(e).splitlines()[0]}") from None
    if rank == 0:
        click.echo(f"wrote {out} ({RECIPE_NAME}: the run's full recipe)")


if __name__ == "__main__":
    main()
