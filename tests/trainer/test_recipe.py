"""Recipes (recipe.py): the shipped files hold the settings they claim, library / CLI / recipe
defaults agree, a flag overrides exactly one field, bad files are one line, a run writes its full
recipe (which reruns it), and evaluation during training (monitor.py) logs, keeps the best weights
and writes TensorBoard scalars."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from phm.trainer.cli import main
from phm.trainer.distill import DistillConfig
from phm.trainer.inject import PHMConfig
from phm.trainer.recipe import load_recipe, recipe_doc, settings
from tinymodels import save_char_tokenizer, save_tiny_model

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    model = save_char_tokenizer(save_tiny_model("llama", root / "llama"))
    data = root / "data.txt"
    data.write_text("".join(f"sample sentence {i} about PHM{' layers' * (i % 4)}\n" for i in range(60)))
    return model, data


def test_shipped_recipes_hold_their_settings():
    paper = settings(load_recipe(RECIPES / "paper-qwen2.5-vl-7b.yaml"))
    assert (paper.phm.num_bases, paper.phm.top_k_b3, paper.phm.towers) == (2, 12, ("language", "vision"))
    d = paper.distill
    assert (d.fade_fraction, d.stage_b_fraction, d.schedule) == (0.7, 0.2, "progressive")
    assert (d.kd_temperature, d.kd_weight_start, d.kd_weight, d.label_smoothing) == (4.0, 0.0, 0.7, 0.1)
    assert d.ce_weight > 0 and (d.lora_r, d.lora_alpha) == (8, 16)
    assert (d.base_dtype, d.gradient_checkpointing, d.device) == ("bfloat16", True, "cuda")
    smol = settings(load_recipe(RECIPES / "smollm2-cpu.yaml"))
    assert smol.model_dir == "sample:smollm2" and smol.data == "chatterbot"
    assert (smol.distill.steps, smol.distill.local_epochs, smol.distill.kd_temperature) == (20, 2, 2.0)
    assert smol.distill.holdout == 0.15 and smol.distill.chat_template and smol.distill.calibrate_init
    minilm = settings(load_recipe(RECIPES / "minilm-cpu.yaml"))
    assert (minilm.distill.objective, minilm.augment_lm, minilm.augment_rounds) == ("embedding", "sample:smollm2", 2)


def test_library_cli_and_recipe_defaults_agree(llama):
    """No recipe, no flag: the CLI's settings are the library's defaults, field by field."""
    model, _ = llama
    result = _run(model, "--print-recipe")
    assert result.exit_code == 0, result.output
    cli_doc = yaml.safe_load(result.output)
    library = settings({"model_dir": str(model)})
    assert library.phm == dataclasses.replace(PHMConfig(), init="projection")
    assert library.distill == DistillConfig()
    assert cli_doc == recipe_doc(library)


def test_a_flag_overrides_one_field_of_the_recipe():
    base = yaml.safe_load(_run("--recipe", RECIPES / "smollm2-cpu.yaml", "--print-recipe").output)
    result = _run("--recipe", RECIPES / "smollm2-cpu.yaml", "--steps", "5", "--print-recipe")
    changed = yaml.safe_load(result.output)
    assert changed["schedule"]["steps"] == 5 and base["schedule"]["steps"] == 20
    changed["schedule"]["steps"] = 20
    assert changed == base
    epochs = yaml.safe_load(_run("--recipe", RECIPES / "smollm2-cpu.yaml", "--epochs", "2", "--print-recipe").output)
    assert epochs["schedule"]["epochs"] == 2 and epochs["schedule"]["steps"] == DistillConfig().steps


@pytest.mark.parametrize("text,message", [
    ("recipe_version: 2\n", "recipe_version 2 is not supported"),
    ("recipe_version: 1\nlosses:\n  kd_temp: 2\n", "unknown key losses.kd_temp (known in losses: objective"),
    ("recipe_version: 1\ntraining:\n  steps: 2\n", "unknown section 'training'"),
    ("recipe_version: 1\nschedule:\n  schedule: sudden\n", "schedule must be 'progressive' or 'abrupt'"),
    ("recipe_version: 1\nmodel:\n  init: magic\n", "init must be one of calibrated, projection, random"),
    ("recipe_version: 1\nschedule: [1, 2\n", "is not valid YAML"),
    ("- 1\n- 2\n", "a recipe is a mapping of sections"),
])
def test_bad_recipes_are_one_line(tmp_path, llama, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = _run(llama[0], "--recipe", path, "--out", tmp_path / "out")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "out").exists()


def test_missing_recipe_and_missing_model(tmp_path):
    assert "recipe" in _run("--recipe", tmp_path / "none.yaml", "--print-recipe").output
    result = _run("--out", tmp_path / "o", "--steps", "2")
    assert result.exit_code == 1 and "no model: give MODEL_DIR or a recipe with model.path" in result.output


def test_run_writes_its_recipe_evaluates_and_keeps_the_best(llama, tmp_path):
    model, data = llama
    out = tmp_path / "out"
    result = _run(model, "--data", data, "--out", out, "--steps", 6, "--batch-size", 4, "--max-length", 24,
                  "--holdout", 0.2, "--eval-every", 3, "--log-every", 2, "--init", "projection")
    assert result.exit_code == 0, result.output
    written = (out / "recipe.yaml").read_text()
    again = _run("--recipe", out / "recipe.yaml", "--print-recipe")
    assert again.output == written  # the written recipe reruns the run as it ran
    doc = yaml.safe_load(written)
    assert doc["model"]["path"] == str(model.resolve()) and doc["eval"]["every"] == 3
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    evals = [h for h in log if h["stage"] == "eval"]
    assert [h["step"] for h in evals] == [0, 3, 6]
    assert all(0 <= h["top1_agreement"] <= 1 and h["ppl"] > 0 and h["tokens"] > 0 for h in evals)
    assert [h["step"] for h in log if h["stage"] != "eval"] == [2, 4, 6]
    state = json.loads((out / "train_state" / "state.json").read_text())
    best = max(evals, key=lambda h: (h["top1_agreement"], h["step"]))
    assert state["best"] == {"step": best["step"], "value": best["top1_agreement"]}
    if importlib.util.find_spec("tensorboard") is not None:
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_best_weights_are_what_the_run_ends_on(llama):
    """keep_best: the returned model holds the weights of the best evaluation, not the last step's."""
    from phm.trainer import inject_phm
    from phm.trainer.data import TokenBatches
    from phm.trainer.distill import distill
    from phm.trainer.evaluate import compare, reference_outputs
    from tinymodels import tiny_model
    from trainkit import random_batches

    held = list(TokenBatches(random_batches(5, count=8).sequences, 4).all_batches())
    results = {}
    for keep in (False, True):
        m = tiny_model("llama")
        inject_phm(m, PHMConfig(init="random"))
        config = DistillConfig(steps=6, eval_every=2, keep_best=keep, progress=False, calibrate_init=False,
                               core_lr=0.5, warmup_steps=0, tensorboard=False)  # a rate that overshoots
        trained, history = distill(m, random_batches(), config, eval_data=held)
        results[keep] = (trained, history)
    evals = [h for h in results[True][1] if h["stage"] == "eval"]
    best = max(evals, key=lambda h: (h["top1_agreement"], h["step"]))
    assert best["step"] < evals[-1]["step"]  # the overshooting rate made the last evaluation worse
    teacher = tiny_model("llama")
    reference = reference_outputs(teacher, held, "logits")
    kept = compare(results[True][0], reference, held, "logits")["top1_agreement"]
    assert kept == pytest.approx(best["top1_agreement"], abs=1e-6)
    last = compare(results[False][0], reference, held, "logits")["top1_agreement"]
    assert last == pytest.approx(evals[-1]["top1_agreement"], abs=1e-6) and kept > last


def test_eval_without_held_out_data_is_refused(llama, tmp_path):
    model, data = llama
    result = _run(model, "--data", data, "--out", tmp_path / "o", "--steps", 2, "--eval-every", 1)
    assert result.exit_code == 1 and "needs held-out data" in result.output
    assert not (tmp_path / "o").exists()
