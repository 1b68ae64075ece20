"""Recipes: every setting of a `phm-train` run in one nested, versioned YAML file.

    phm-train --recipe recipes/smollm2-cpu.yaml --out runs/smollm2        # the recipe as written
    phm-train --recipe recipes/paper-qwen2.5-vl-7b.yaml MODEL_DIR --out o --steps 50   # a flag overrides one field
    phm-train --recipe FILE --print-recipe                              # the full effective recipe

    recipe_version: 1
    model:     path, n, num_bases, basis_family, towers, projections, top_k_b3, layer_num_bases,
               target_size, target_gb, init
    data:      path, data_free_samples, augment_lm, augment_rounds, batch_size, max_length, pack,
               stream, group_by_length, holdout, chat_template
    schedule:  steps, epochs, schedule, stage_b_fraction, fade_fraction, ramp_width, order, warmup_steps
    losses:    objective, kd_temperature, kd_weight, kd_weight_start, ce_weight, label_smoothing,
               hidden_weight, recon_weight
    optimizer: lr, core_lr, weight_decay, grad_clip
    lora:      r, alpha
    init:      calib_batches, calib_ridge, local_epochs, local_batches, local_lr, local_inputs, local_cache
    eval:      every, texts, keep_best
    runtime:   device, amp, base_dtype, gradient_checkpointing, parallel, checkpoint_every, log_every,
               tensorboard, seed

Every key is a field of PHMConfig, DistillConfig or `train()` (the table below says which); what a
recipe leaves out keeps the library's default, and the CLI's flags have those same defaults, so a
flag given on the command line overrides exactly one field and nothing else. `model.init` is the
CLI's --init (calibrated | projection | random). Relative paths (model.path, data.path,
data.augment_lm) are relative to the recipe file when that file exists there. The run writes its
full effective recipe to OUT/recipe.yaml, which reruns it as it ran.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .distill import DistillConfig
from .inject import PHMConfig

__all__ = ["RECIPE_VERSION", "RunSettings", "load_recipe", "recipe_doc", "settings"]

RECIPE_VERSION = 1
RECIPE_NAME = "recipe.yaml"

# section → {recipe key: settings key}; settings keys are PHMConfig / DistillConfig fields or RUN_KEYS
SECTIONS = {
    "model": {"path": "model_dir", "n": "n", "num_bases": "num_bases", "basis_family": "bases", "towers": "towers",
              "projections": "projections", "top_k_b3": "top_k_b3", "layer_num_bases": "layer_num_bases",
              "target_size": "target_size", "target_gb": "target_gb", "init": "init"},
    "data": {"path": "data", "data_free_samples": "data_free_samples", "augment_lm": "augment_lm",
             "augment_rounds": "augment_rounds", "batch_size": "batch_size", "max_length": "max_length",
             "pack": "pack", "stream": "stream", "group_by_length": "group_by_length", "holdout": "holdout",
             "chat_template": "chat_template"},
    "schedule": {k: k for k in ("steps", "epochs", "schedule", "stage_b_fraction", "fade_fraction", "ramp_width",
                                "order", "warmup_steps")},
    "losses": {k: k for k in ("objective", "kd_temperature", "kd_weight", "kd_weight_start", "ce_weight",
                              "label_smoothing", "hidden_weight", "recon_weight")},
    "optimizer": {k: k for k in ("lr", "core_lr", "weight_decay", "grad_clip")},
    "lora": {"r": "lora_r", "alpha": "lora_alpha"},
    "init": {k: k for k in ("calib_batches", "calib_ridge", "local_epochs", "local_batches", "local_lr",
                            "local_inputs", "local_cache")},
    "eval": {"every": "eval_every", "texts": "eval_texts", "keep_best": "keep_best"},
    "runtime": {k: k for k in ("device", "amp", "base_dtype", "gradient_checkpointing", "parallel",
                               "checkpoint_every", "log_every", "tensorboard", "seed")},
}
INITS = ("calibrated", "projection", "random")
# train()'s own arguments and their defaults (the rest are PHMConfig / DistillConfig fields)
RUN_KEYS = {"model_dir": None, "data": None, "data_free_samples": 256, "augment_lm": None, "augment_rounds": 1,
            "epochs": None, "init": "calibrated"}
_PATHS = ("model_dir", "data", "augment_lm")


@dataclass(frozen=True)
class RunSettings:
    """One run: the PHM and distillation configs and train()'s own arguments."""

    phm: PHMConfig
    distill: DistillConfig
    model_dir: str | None = None
    data: str | None = None
    data_free_samples: int = 256
    augment_lm: str | None = None
    augment_rounds: int = 1
    epochs: float | None = None

    def train_kwargs(self) -> dict:
        return {"data": self.data, "data_free_samples": self.data_free_samples, "augment_lm": self.augment_lm,
                "augment_rounds": self.augment_rounds, "epochs": self.epochs}


def _known(section: str) -> str:
    return ", ".join(SECTIONS[section])


def _flatten(doc: dict, where: str) -> dict:
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: a recipe is a mapping of sections ({', '.join(SECTIONS)})")
    version = doc.get("recipe_version")
    if version != RECIPE_VERSION:
        raise ValueError(f"{where}: recipe_version {version!r} is not supported (this phm-train reads "
                         f"recipe_version: {RECIPE_VERSION})")
    flat = {}
    for section, body in doc.items():
        if section == "recipe_version":
            continue
        if section not in SECTIONS:
            raise ValueError(f"{where}: unknown section {section!r} (known: {', '.join(SECTIONS)})")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ValueError(f"{where}: section {section!r} must be a mapping of keys ({_known(section)})")
        for key, value in body.items():
            if key not in SECTIONS[section]:
                raise ValueError(f"{where}: unknown key {section}.{key} (known in {section}: {_known(section)})")
            flat[SECTIONS[section][key]] = value
    return flat


def load_recipe(path: str | Path) -> dict:
    """The settings a recipe file sets ({settings key: value}); one-line ValueError on a bad file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"recipe {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    flat = _flatten(doc, str(path))
    for key in _PATHS:  # relative to the recipe when it names a file beside it (else a name: chatterbot, sample:…)
        value = flat.get(key)
        if isinstance(value, str) and not Path(value).is_absolute() and (path.parent / value).exists():
            flat[key] = str((path.parent / value).resolve())
    return flat


def settings(values: dict) -> RunSettings:
    """RunSettings from {settings key: value} (library defaults for the rest); ValueError names the field."""
    phm_fields = {f.name for f in dataclasses.fields(PHMConfig)} - {"init"}
    distill_fields = {f.name for f in dataclasses.fields(DistillConfig)} - {"calibrate_init"}
    unknown = set(values) - phm_fields - distill_fields - set(RUN_KEYS)
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    run = {k: values.get(k, default) for k, default in RUN_KEYS.items()}
    init = run.pop("init")
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    phm = PHMConfig(**{k: _tuple_or(values[k]) for k in phm_fields if k in values},
                    init="random" if init == "random" else "projection")
    distill = DistillConfig(**{k: values[k] for k in distill_fields if k in values}, calibrate_init=init == "calibrated")
    return RunSettings(phm, distill, **run)


def _tuple_or(value):
    return tuple(value) if isinstance(value, list) else value


def recipe_doc(run: RunSettings) -> dict:
    """The full recipe of `run` (every key), what --print-recipe prints and OUT/recipe.yaml holds."""
    init = "calibrated" if run.distill.calibrate_init else "random" if run.phm.init == "random" else "projection"
    values = {**dataclasses.asdict(run.phm), **dataclasses.asdict(run.distill),
              **{k: getattr(run, k) for k in RUN_KEYS if k != "init"}, "init": init}
    for key in _PATHS:  # a rerun from another directory finds the same files
        if isinstance(values[key], str) and Path(values[key]).exists():
            values[key] = str(Path(values[key]).resolve())
    doc: dict = {"recipe_version": RECIPE_VERSION}
    for section, keys in SECTIONS.items():
        doc[section] = {key: _plain(values[name]) for key, name in keys.items()}
    return doc


def _plain(value):
    return list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, dict) else value


def dump_recipe(run: RunSettings) -> str:
    import yaml

    return yaml.safe_dump(recipe_doc(run), sort_keys=False, allow_unicode=True)
