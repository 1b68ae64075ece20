"""`phm-train --plan` / `plan_training`: the memory plan from the config on the meta device.

The activations are counted, not estimated: the planner's meta-device count equals what the same
training forward saves on real tensors (eager attention) for every test architecture; a run that
does not fit `--device-gib` is refused before a weight is loaded."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from phm.trainer import PHMConfig, inject_phm, load
from phm.trainer.cli import main
from phm.trainer.distill import DistillConfig, _add_lora, _objective, _trainable
from phm.trainer.plan import GiB, plan_training, step_bytes
from tinymodels import save_char_tokenizer, save_tiny_model

ARCHS = ("llama", "gpt2", "bert", "qwen2_5_vl")


@pytest.mark.parametrize("arch", ARCHS)
def test_meta_plan_counts_what_a_real_step_holds(arch, tmp_path):
    model_dir = save_tiny_model(arch, tmp_path / "m")
    config = DistillConfig(batch_size=3, max_length=24)
    plan = plan_training(model_dir, PHMConfig(), config)
    model = load(model_dir)
    model.set_attn_implementation("eager")
    inject_phm(model, PHMConfig(init="projection"))
    objective = _objective(model, config)
    model = _add_lora(model, config)
    named = _trainable(model)
    _, teacher, saved = step_bytes(model, objective, config, device="cpu")
    assert (plan.items["activations"], plan.items["teacher outputs"]) == (saved, teacher)
    trainable = sum(p.numel() for _, p in named)
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    assert plan.params == {"total": total, "trainable": trainable, "frozen": total - trainable}
    assert plan.items["AdamW"] == 2 * plan.items["gradients"] == 8 * trainable
    # stages: what each adds to what every stage holds
    held = plan.items["weights"] + plan.items["trainable"]
    assert plan.stages["KD step"] == held + sum(plan.items[k] for k in ("gradients", "AdamW", "activations",
                                                                          "teacher outputs", "temporaries"))
    assert plan.peak == max(plan.stages.values()) and plan.verdict == "no device size given"


def test_plan_grows_with_the_batch_and_the_settings(tmp_path):
    model_dir = save_tiny_model("llama", tmp_path / "m")
    small = plan_training(model_dir, PHMConfig(), DistillConfig(batch_size=2, max_length=16))
    large = plan_training(model_dir, PHMConfig(), DistillConfig(batch_size=4, max_length=32, local_epochs=1,
                                                                 local_batches=8))
    assert large.items["activations"] > 3 * small.items["activations"]
    assert small.items["local stage"] == 0 < large.items["local stage"] == 3 * 8 * 4 * 32 * 32 * 4  # hidden 32
    no_calib = plan_training(model_dir, PHMConfig(), DistillConfig(batch_size=2, max_length=16, calibrate_init=False))
    assert no_calib.items["calibration"] == 0 < small.items["calibration"]
    assert plan_training(model_dir, PHMConfig(), DistillConfig(batch_size=2, max_length=16), device_gib=1e-6).verdict \
        == "does-not-fit"


def test_seven_b_shape_is_planned_from_its_config(tmp_path):
    """A Qwen2-7B-shaped config (no weights: a placeholder safetensors file) plans in seconds and
    little memory; B = 2 on every MLP projection is ≈ 2.9 B trainable parameters."""
    import transformers
    from safetensors.numpy import save_file

    cfg = transformers.Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                   num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)
    cfg.architectures = ["Qwen2ForCausalLM"]
    model_dir = tmp_path / "qwen7b"
    cfg.save_pretrained(model_dir)
    save_file({"placeholder": np.zeros(1, np.float32)}, str(model_dir / "model.safetensors"))
    plan = plan_training(model_dir, PHMConfig(num_bases=2), DistillConfig(batch_size=1, max_length=256), device_gib=80)
    assert 2.8e9 < plan.params["trainable"] < 3.0e9
    # every PHM linear's input covariance in float64 at once: 28 × (2·3584² + 18944²) · 8 bytes
    assert plan.items["calibration"] == 28 * (2 * 3584 ** 2 + 18944 ** 2) * 8
    assert plan.verdict == "does-not-fit" and plan.peak > 80 * GiB


@pytest.fixture
def llama_dir(tmp_path):
    return save_char_tokenizer(save_tiny_model("llama", tmp_path / "llama"))


def test_cli_plan_prints_the_table(llama_dir):
    result = CliRunner().invoke(main, [str(llama_dir), "--plan", "--batch-size", "2", "--device-gib", "1"])
    assert result.exit_code == 0, result.output
    for word in ("weights", "activations", "AdamW", "KD step", "peak", "fits"):
        assert word in result.output


def test_cli_refuses_a_run_that_does_not_fit_before_loading(llama_dir, tmp_path, monkeypatch):
    from phm.trainer import pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(pipeline, "load_pretrained", refuse)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [str(llama_dir), "--out", str(out), "--data", "chatterbot", "--device-gib",
                                       "0.0001"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: --device-gib: the run needs") and "GiB" in lines[0]
    assert not out.exists()


def test_cli_needs_out_unless_plan(llama_dir):
    result = CliRunner().invoke(main, [str(llama_dir)])
    assert result.exit_code != 0 and "--out" in result.output
