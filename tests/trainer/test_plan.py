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


def _real_student(model_dir, config):
    """What the trainer trains, on real tensors with eager attention: (model, objective, trainable)."""
    model = load(model_dir)
    model.set_attn_implementation("eager")
    inject_phm(model, PHMConfig(init="projection"))
    objective = _objective(model, config)
    model = _add_lora(model, config)
    return model, objective, _trainable(model)


@pytest.mark.parametrize("arch", ARCHS)
def test_meta_plan_counts_what_a_real_step_holds(arch, tmp_path):
    model_dir = save_tiny_model(arch, tmp_path / "m")
    config = DistillConfig(batch_size=3, max_length=24)
    plan = plan_training(model_dir, PHMConfig(), config)
    model, objective, named = _real_student(model_dir, config)
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


@pytest.mark.parametrize("arch", ["llama", "qwen2_5_vl"])
def test_checkpointing_plan_counts_what_a_recomputing_step_holds(arch, tmp_path):
    """With gradient checkpointing the meta count again equals a real step's (layer inputs and what is
    saved outside the layers), the recompute item is one layer's share, and bf16 halves the weights."""
    from phm.trainer.recompute import checkpoint_layers

    model_dir = save_tiny_model(arch, tmp_path / "m")
    config = DistillConfig(batch_size=3, max_length=24)
    plain = plan_training(model_dir, PHMConfig(), config)
    ckpt_config = DistillConfig(batch_size=3, max_length=24, gradient_checkpointing=True, base_dtype="bfloat16")
    ckpt = plan_training(model_dir, PHMConfig(), ckpt_config)
    model, objective, _ = _real_student(model_dir, config)
    assert checkpoint_layers(model) == model.config.get_text_config().num_hidden_layers
    _, _, kept = step_bytes(model, objective, config, device="cpu")
    assert 0 < ckpt.items["activations"] < plain.items["activations"] and ckpt.items["recompute"] > 0
    layers = model.config.get_text_config().num_hidden_layers
    fp32_ckpt = plan_training(model_dir, PHMConfig(), DistillConfig(batch_size=3, max_length=24,
                                                                    gradient_checkpointing=True))
    assert fp32_ckpt.items["activations"] == kept
    assert fp32_ckpt.items["recompute"] == (plain.items["activations"] - kept) // layers
    assert ckpt.items["weights"] < 0.51 * plain.items["weights"] and ckpt.items["trainable"] == plain.items["trainable"]


def test_plan_per_device_of_a_data_parallel_run(tmp_path):
    model_dir = save_tiny_model("llama", tmp_path / "m")
    config = dict(batch_size=4, max_length=16, calibrate_init=False)
    one = plan_training(model_dir, PHMConfig(), DistillConfig(**config))
    half = plan_training(model_dir, PHMConfig(), DistillConfig(**{**config, "batch_size": 2}))
    ddp = plan_training(model_dir, PHMConfig(), DistillConfig(**config), world_size=2)
    fsdp = plan_training(model_dir, PHMConfig(), DistillConfig(**config, parallel="fsdp"), world_size=2)
    assert ddp.batch == fsdp.batch == (2, 16) and ddp.items["activations"] == half.items["activations"]
    assert ddp.items["DDP buckets"] == ddp.items["gradients"] == one.items["gradients"] and fsdp.items["DDP buckets"] == 0
    assert fsdp.items["gradients"] == one.items["gradients"] // 2 and fsdp.items["AdamW"] == one.items["AdamW"] // 2
    assert fsdp.items["FSDP gather"] > 0 and fsdp.stages["KD step"] < ddp.stages["KD step"]
    assert "per device of 2, FSDP" in fsdp.table()
    with pytest.raises(ValueError, match="not divisible by world size 3"):
        plan_training(model_dir, PHMConfig(), DistillConfig(**config), world_size=3)


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


def test_host_cached_local_stage_plans_one_batch(tmp_path):
    model_dir = save_tiny_model("llama", tmp_path / "m")
    config = dict(batch_size=4, max_length=32, local_epochs=1, local_batches=8)
    device = plan_training(model_dir, PHMConfig(), DistillConfig(**config, local_cache="device"))
    host = plan_training(model_dir, PHMConfig(), DistillConfig(**config, local_cache="host"))
    assert host.items["local stage"] * 8 == device.items["local stage"] > 0
