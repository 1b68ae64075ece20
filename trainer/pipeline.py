"""HF model dir → PHM checkpoint dir: what `phm-train` runs (load, data, inject, distill, save).

    out/                               the PHM checkpoint dir (checkpoint.py) plus
      recipe.yaml                      the run's full recipe (recipe.py): reruns it as it ran
      distill_config.json              the run's DistillConfig (format_version)
      train_log.jsonl                  loss / λ / lr per logged step; held-out evaluations (stage "eval")
      tensorboard/                     the same as TensorBoard scalars (when tensorboard is installed)
      budget.json                      --target-size/--target-gb: B per block, sizes, measured errors
      train_state/                     resumable training state (distill.py), every N steps
      teacher_samples.jsonl            data-free runs: the sampled texts (reused on --resume)
      augment_samples.jsonl            --augment-lm runs: the LM's reply sentences (reused on --resume)

Nothing in `out/` is ever half-written: the state and the final checkpoint are swapped in
atomically, so an interrupted run leaves the last complete state, from which --resume continues.

Under `torchrun` (parallel.py) every process loads the model and builds the same batches; rank 0
alone holds the output dir's lock, checks it, samples/caches texts first (the others then read its
file) and writes every file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
from pathlib import Path

from phm.common.fsutil import atomic_write_text, check_apart, output_lock, recover_dir

from .arch import ARCH_TABLE, supported_model_types
from .checkpoint import PHM_CONFIG_NAME, read_model_config, save_phm_checkpoint
from .data import (ImageTextBatches, TokenBatches, chat_turns, read_samples, sample_key, sample_teacher_texts,
                   split_holdout, to_device)
from .stream import StreamingTokenBatches, held_out_texts
from .distill import BASE_DTYPES, STATE_DIR_NAME, DistillConfig, distill, read_state
from .budget import choose_bases
from .inject import PHMConfig, inject_phm, phm_targets
from .models import load_pretrained, load_tokenizer, resolve_model_dir
from .parallel import World, world_from_env
from .recipe import RECIPE_NAME
from .textgen import reply_sentences

__all__ = ["AUGMENT_SAMPLES_NAME", "TEACHER_SAMPLES_NAME", "train"]

log = logging.getLogger(__name__)

TEACHER_SAMPLES_NAME = "teacher_samples.jsonl"
TENSORBOARD_NAME = "tensorboard"
BUDGET_NAME = "budget.json"
AUGMENT_SAMPLES_NAME = "augment_samples.jsonl"


def _augment_settings(lm_dir: Path | None, rounds: int) -> dict | None:
    """What --augment-lm changes in the training text (saved with the training state, compared on resume)."""
    return None if lm_dir is None else {"augment_lm": lm_dir.name, "rounds": rounds}


def _augment(texts: list[str], out_dir: Path, lm_dir: Path, rounds: int, seed: int) -> list[str]:
    """`texts` plus the reply sentences of the chat LM in `lm_dir` to them (textgen.py), cached in out_dir."""
    cache = out_dir / AUGMENT_SAMPLES_NAME
    # first line: what made the replies, so a rerun with other settings regenerates instead of reusing them
    meta = {"augment_lm": lm_dir.name, "rounds": rounds, "seed": seed, "prompts": len(texts)}
    lines = cache.read_text(encoding="utf-8").splitlines() if cache.is_file() else []
    if lines and json.loads(lines[0]) == meta:
        replies = [json.loads(line)["text"] for line in lines[1:] if line]
    else:
        log.info("--augment-lm: %d round(s) of %s's replies to the %d training texts", rounds, lm_dir.name, len(texts))
        replies = reply_sentences(load_pretrained(lm_dir), load_tokenizer(lm_dir), texts, rounds=rounds, seed=seed)
        atomic_write_text(cache, "".join(json.dumps(x) + "\n" for x in [meta] + [{"text": t} for t in replies]))
    log.info("training on %d texts + %d reply sentences", len(texts), len(replies))
    return texts + replies


def _check_plan(model_dir: Path, phm_config: PHMConfig, config: DistillConfig, device_gib: float,
                world_size: int = 1) -> None:
    from .plan import plan_training

    _check_architecture(model_dir)
    plan = plan_training(model_dir, phm_config, config, device_gib, world_size=world_size)
    log.info("memory plan:\n%s", plan.table())
    if plan.verdict == "does-not-fit":
        raise ValueError(f"--device-gib: {plan.refusal()}")


def _check_out_dir(out_dir: Path, resume: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path {out_dir} exists and is not a directory; choose another --out")
    # a run killed while swapping in its checkpoint or state leaves the previous one beside it: restore it
    recover_dir(out_dir)
    if out_dir.is_dir():
        recover_dir(out_dir / STATE_DIR_NAME)
    if resume:
        read_state(out_dir / STATE_DIR_NAME)  # raises "no training state to resume in …"
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"output dir {out_dir} exists and is not empty; pass --resume to continue its run "
                         f"or choose another --out")


def _check_architecture(model_dir: Path) -> None:
    model_type = read_model_config(model_dir)["model_type"]
    if model_type not in ARCH_TABLE:
        raise ValueError(f"unsupported architecture {model_type!r}; supported: {', '.join(supported_model_types())}")


def _held_out(config: DistillConfig, items: list, key=str) -> tuple[list, list]:
    """(train, evaluated) items: `holdout` of them split off by hash, at most `eval_texts` evaluated."""
    if not config.holdout:
        return items, []
    train, held = split_holdout(items, config.holdout, key=key)
    if not train:
        raise ValueError(f"holdout {config.holdout} leaves no training data of {len(items)} samples")
    return train, held[:config.eval_texts or None]


def _training_data(model, model_dir: Path, out_dir: Path, data: str | None, config: DistillConfig,
                   data_free_samples: int, augment_lm: Path | None = None, augment_rounds: int = 1,
                   world: World = World()):
    """(training batches, held-out batches) for `data` (path or 'chatterbot'), or teacher-sampled text
    when data is None; with `augment_lm`, plus that chat LM's replies to the training texts. Texts the
    run makes itself (teacher samples, replies) are made by rank 0, cached in out_dir, and read from
    there by the others."""
    if config.stream:
        return _streamed_data(model_dir, data, config)
    if data is not None:
        samples = read_samples(data)
        if any(s.image is not None for s in samples):
            return _image_data(model_dir, samples, config, augment_lm)
        texts = [s.text for s in samples]
    else:
        texts = world.main_first(lambda: _teacher_texts(model, model_dir, out_dir, config, data_free_samples))
    texts, held = _held_out(config, texts)
    if augment_lm is not None:
        texts = world.main_first(lambda: _augment(texts, out_dir, augment_lm, augment_rounds, config.seed))
    tokenizer = load_tokenizer(model_dir)
    if config.chat_template:
        texts, held = chat_turns(tokenizer, texts), chat_turns(tokenizer, held)
    evaluated = _text_batches(tokenizer, held, config)
    if config.pack:
        return TokenBatches.packed(tokenizer, texts, config.batch_size, config.max_length, config.seed), evaluated
    return TokenBatches.from_texts(tokenizer, texts, config.batch_size, config.max_length, config.seed,
                                   group_by_length=config.group_by_length), evaluated


def _text_batches(tokenizer, held: list[str], config: DistillConfig) -> list[dict]:
    """The held-out texts as evaluation batches."""
    return list(TokenBatches.from_texts(tokenizer, held, config.batch_size, config.max_length).all_batches()) \
        if held else []


def _check_stream(data: str | None, epochs: float | None, augment_lm) -> None:
    """What --stream cannot do, refused before any work."""
    if data is None or str(data) == "chatterbot":
        raise ValueError("--stream reads data files: give --data FILE or FOLDER (.parquet, .arrow or .jsonl)")
    if augment_lm is not None:
        raise ValueError("--augment-lm answers every training text up front; it does not apply with --stream")
    if epochs is not None:
        raise ValueError("--epochs needs the data's length up front; with --stream give --steps")


def _streamed_data(model_dir: Path, data: str, config: DistillConfig):
    """(streamed training batches, held-out batches) of a text corpus too large to read up front."""
    tokenizer = load_tokenizer(model_dir)
    held = held_out_texts(data, config.holdout, config.eval_texts) if config.holdout else []
    if config.chat_template:
        held = chat_turns(tokenizer, held)
    batches = StreamingTokenBatches(data, tokenizer, config.batch_size, config.max_length, config.seed,
                                    config.holdout, config.pack, config.chat_template)
    log.info("streaming %s: %d rows in %d %s file(s), read as the run goes", data, batches.rows,
             len(batches.files), batches.kind)
    return batches, _text_batches(tokenizer, held, config)


def _image_data(model_dir: Path, samples: list, config: DistillConfig, augment_lm: Path | None):
    """(training batches, held-out batches) of image+caption samples through the model's processor."""
    for flag, what in ((config.pack, "--pack"), (augment_lm is not None, "--augment-lm"),
                       (config.chat_template, "--chat-template")):
        if flag:
            raise ValueError(f"{what} applies to text data; this data has images")
    import transformers

    try:
        processor = transformers.AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"image data needs a processor in {model_dir}: {str(e).splitlines()[0]}") from None
    train, held = _held_out(config, [s for s in samples if s.image is not None], key=sample_key)
    evaluated = list(ImageTextBatches(processor, held, config.batch_size, answer_mask=True).all_batches()) if held else []
    return ImageTextBatches(processor, train, config.batch_size, seed=config.seed), evaluated


def _teacher_texts(model, model_dir: Path, out_dir: Path, config: DistillConfig, count: int) -> list[str]:
    """`count` texts sampled from the teacher, cached in out_dir (reused on --resume)."""
    cache = out_dir / TEACHER_SAMPLES_NAME
    if cache.is_file():
        return [json.loads(line)["text"] for line in cache.read_text(encoding="utf-8").splitlines() if line]
    log.info("no --data: sampling %d texts from the teacher (data-free KD)", count)
    texts = sample_teacher_texts(model, load_tokenizer(model_dir), count, max_new_tokens=min(config.max_length, 96),
                                 seed=config.seed, progress=config.progress)
    atomic_write_text(cache, "".join(json.dumps({"text": t}) + "\n" for t in texts))
    return texts


def train(model_dir: str | Path, out_dir: str | Path, phm_config: PHMConfig, config: DistillConfig,
          data: str | None = None, data_free_samples: int = 256, resume: bool = False,
          epochs: float | None = None, augment_lm: str | None = None, augment_rounds: int = 1,
          device_gib: float | None = None, recipe_text: str | None = None) -> Path:
    """Load `model_dir`, inject PHM, distill, and write the PHM checkpoint dir `out_dir`.

    `device_gib`: the run's memory plan (plan.py) is made first and a run that does not fit is
    refused (ValueError with the numbers) before any weight is loaded.
    `epochs` (if given) overrides config.steps with epochs × batches per epoch. `augment_lm` (a chat LM's
    model dir): add its sampled replies to the text data (`augment_rounds` per text). Raises ValueError
    with one clear line on bad input (missing dir, unsupported architecture, empty data, …).
    `recipe_text`: the run's full recipe (recipe.py), written to OUT/recipe.yaml.
    """
    model_dir, out_dir = resolve_model_dir(model_dir), Path(out_dir)
    if augment_lm is not None:
        augment_lm = resolve_model_dir(augment_lm)  # a missing LM dir is an error before any work
        if augment_rounds < 1:
            raise ValueError(f"augment rounds must be ≥ 1, got {augment_rounds}")
    if config.stream:
        _check_stream(data, epochs, augment_lm)
    data_path = Path(data) if data is not None and Path(data).exists() else None  # not 'chatterbot'
    check_apart(out_dir, {"model dir": model_dir, "training data": data_path, "--augment-lm dir": augment_lm})
    world = world_from_env(config.device)
    if device_gib is not None:
        world.main_first(lambda: _check_plan(model_dir, phm_config, config, device_gib, world.size))
    # one writer per run dir, for the whole run: rank 0 (the others write nothing)
    with output_lock(out_dir) if world.main else contextlib.nullcontext():
        world.main_first(lambda: _check_out_dir(out_dir, resume) if world.main else None)
        created = not out_dir.exists()
        try:
            return _train(model_dir, out_dir, phm_config, config, data, data_free_samples, resume, epochs,
                          augment_lm, augment_rounds, world, recipe_text)
        except BaseException:
            if created and world.main:  # a run that failed before its first state checkpoint leaves no empty out dir
                if not (out_dir / STATE_DIR_NAME).exists():
                    shutil.rmtree(out_dir / TENSORBOARD_NAME, ignore_errors=True)
                with contextlib.suppress(OSError):
                    out_dir.rmdir()
            raise


def _train(model_dir: Path, out_dir: Path, phm_config: PHMConfig, config: DistillConfig, data: str | None,
           data_free_samples: int, resume: bool, epochs: float | None, augment_lm: Path | None = None,
           augment_rounds: int = 1, world: World = World(), recipe_text: str | None = None) -> Path:
    augment = _augment_settings(augment_lm, augment_rounds)
    budget = config.target_size is not None or config.target_gb is not None
    if resume:
        saved = json.loads((out_dir / STATE_DIR_NAME / "state.json").read_text())
        saved_phm = PHMConfig.from_dict(saved.get("phm", phm_config.to_dict()))
        if budget:  # the run chose B per block itself: resume with its choice
            phm_config = dataclasses.replace(phm_config, layer_num_bases=saved_phm.layer_num_bases, top_k_b3=0)
        if saved_phm != phm_config:
            raise ValueError(f"conflicting settings with the run being resumed: PHM config {phm_config} "
                             f"(saved {saved_phm})")
        # the replies are training text: other --augment-lm settings would resume on other batches
        # (states saved before this key was written are not checked)
        if "augment" in saved and saved["augment"] != augment:
            raise ValueError(f"conflicting settings with the run being resumed: --augment-lm {augment} "
                             f"(saved {saved['augment']})")
    _check_architecture(model_dir)  # before loading any weights
    model = load_pretrained(model_dir, dtype=BASE_DTYPES[config.base_dtype])  # frozen weights stored once, as trained
    phm_targets(model, phm_config)  # validates architecture and divisibility before any data work
    batches, evaluated = _training_data(model, model_dir, out_dir, data, config, data_free_samples, augment_lm,
                                        augment_rounds, world)
    choice = None
    if budget and not resume:  # measured on the training device (distill moves the model there anyway)
        device = world.device(config.device)
        count = min(config.calib_batches, len(batches))
        calib = (to_device(batches.batch(i), device) for i in range(count))
        choice = choose_bases(model.to(device), phm_config, calib, config.target_size, config.target_gb,
                              config.calib_ridge, config.progress and world.main, count)
        phm_config = choice.phm_config(phm_config)
    targets = inject_phm(model, phm_config)
    if epochs is not None:
        if epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {epochs}")
        config = DistillConfig.from_dict({**config.to_dict(), "steps": max(1, round(epochs * len(batches)))})
    log.info("%d PHM layers, %d steps of batch %d (%d batches per epoch)", len(targets), config.steps,
             config.batch_size, len(batches))
    if evaluated:
        log.info("%d held-out batches evaluated every %d steps", len(evaluated), config.eval_every)
    model, history = distill(model, batches, config, state_dir=out_dir / STATE_DIR_NAME, resume=resume,
                             state_extra={"phm": phm_config.to_dict(), "augment": augment}, world=world,
                             eval_data=evaluated, tensorboard_dir=out_dir / TENSORBOARD_NAME)
    if not world.main:
        return out_dir
    extra = {"distill_config.json": config.to_json() + "\n",
             "train_log.jsonl": "".join(json.dumps(h) + "\n" for h in history)}
    if recipe_text is not None:
        extra[RECIPE_NAME] = recipe_text
    if choice is not None:
        extra[BUDGET_NAME] = json.dumps(dataclasses.asdict(choice), indent=1) + "\n"
    save_phm_checkpoint(model, phm_config, targets, out_dir, source_dir=model_dir, overwrite=True,
                        extra_files=extra, keep=(STATE_DIR_NAME, TEACHER_SAMPLES_NAME, AUGMENT_SAMPLES_NAME,
                                                 TENSORBOARD_NAME))
    log.info("wrote %s (%s)", out_dir, PHM_CONFIG_NAME)
    return out_dir

