"""The distill verb on tiny real-architecture models: loss goes down, resume is exact, LoRA merges,
vision tower frozen, tiny Qwen2.5-VL train → save → load equality."""

import json

import pytest
import torch

from phm.trainer import PHMConfig, PHMLinear, PHMResidualLinear, inject_phm, load, save_phm_checkpoint
from phm.trainer.arch import is_vision_module
from phm.trainer.distill import DistillConfig, _add_lora, _trainable, distill, read_state
from tinymodels import tiny_model

from trainkit import FAST
from trainkit import random_batches as _batches


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_training_reduces_loss():
    model = tiny_model("llama")
    inject_phm(model, PHMConfig(init="random"))
    _, history = distill(model, _batches(), DistillConfig(steps=30, schedule="abrupt", calibrate_init=False,
                                                          kd_temperature=1.0, core_lr=1e-2, **FAST))
    first, last = history[0]["loss"], sum(h["loss"] for h in history[-5:]) / 5
    assert last < 0.5 * first


def test_progressive_lambda_ramps_and_log():
    model = tiny_model("llama")
    inject_phm(model, PHMConfig())
    _, history = distill(model, _batches(), DistillConfig(steps=10, stage_b_fraction=0.2, fade_fraction=0.5, **FAST))
    lams = [h["lam"] for h in history]
    assert lams[0] < 0.5 and lams == sorted(lams) and lams[-1] == 1.0
    assert [h["stage"] for h in history] == ["A"] * 8 + ["B"] * 2
    assert "recon" in history[0] and "recon" not in history[-1]


def test_distill_requires_injection():
    with pytest.raises(ValueError, match="inject_phm"):
        distill(tiny_model("llama"), _batches(), DistillConfig(steps=1, **FAST))


class _Interrupt(Exception):
    pass


class _Dying:
    """Data that fails at a given step, like a killed process."""

    def __init__(self, inner, die_at):
        self.inner, self.die_at = inner, die_at

    def __len__(self):
        return len(self.inner)

    def batch(self, step):
        if step == self.die_at:
            raise _Interrupt
        return self.inner.batch(step)


def test_resume_after_interruption_is_exact(tmp_path):
    cfg = DistillConfig(steps=8, checkpoint_every=3, **FAST)
    ref = tiny_model("llama")
    inject_phm(ref, PHMConfig())
    ref, ref_hist = distill(ref, _batches(), cfg, state_dir=tmp_path / "a")

    model = tiny_model("llama")
    inject_phm(model, PHMConfig())
    with pytest.raises(_Interrupt):
        distill(model, _Dying(_batches(), 5), cfg, state_dir=tmp_path / "b")
    assert read_state(tmp_path / "b")["step"] == 3  # last complete checkpoint, no partial files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    model = tiny_model("llama")
    inject_phm(model, PHMConfig())
    model, hist = distill(model, _batches(), cfg, state_dir=tmp_path / "b", resume=True)
    assert hist == [{**h, "elapsed_s": hist[i]["elapsed_s"]} for i, h in enumerate(ref_hist)]
    for (name, p), (_, q) in zip(ref.state_dict().items(), model.state_dict().items()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_resume_refuses_changed_settings(tmp_path):
    model = tiny_model("llama")
    inject_phm(model, PHMConfig())
    distill(model, _batches(), DistillConfig(steps=2, **FAST), state_dir=tmp_path / "s")
    model = tiny_model("llama")
    inject_phm(model, PHMConfig())
    with pytest.raises(ValueError, match=r"conflicting settings.*steps=3 \(saved 2\)"):
        distill(model, _batches(), DistillConfig(steps=3, **FAST), state_dir=tmp_path / "s", resume=True)


def test_lora_is_trained_and_merged_on_save(tmp_path):
    original = tiny_model("llama")
    model = tiny_model("llama")
    cfg = PHMConfig()
    targets = inject_phm(model, cfg)
    model, _ = distill(model, _batches(), DistillConfig(steps=6, lr=1e-2, **FAST))
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert not any(isinstance(m, PHMResidualLinear) for m in model.modules())
    q_new = model.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(q_new, original.model.layers[0].self_attn.q_proj.weight)  # LoRA delta merged in
    assert torch.equal(model.model.layers[0].self_attn.o_proj.weight, original.model.layers[0].self_attn.o_proj.weight)
    save_phm_checkpoint(model, cfg, targets, tmp_path / "ck")
    ids = _batches(1).batch(0)["input_ids"]
    torch.testing.assert_close(_logits(load(tmp_path / "ck"), ids), _logits(model, ids), rtol=0, atol=0)


def test_vision_tower_frozen_and_lora_only_on_language_qkv():
    model = tiny_model("qwen2_5_vl")
    inject_phm(model, PHMConfig(towers=("language",)))
    model = _add_lora(model, DistillConfig(**FAST))
    trainable = dict(_trainable(model))
    for name, p in model.named_parameters():
        short = name.removeprefix("base_model.model.")
        if is_vision_module(short):
            assert not p.requires_grad, name
    assert any("language_model.layers.0.self_attn.q_proj.lora_A" in n for n in trainable)
    assert not any("visual" in n for n in trainable)
    assert all(n.endswith((".cores", ".bias")) or "lora_" in n for n in trainable)


def test_tiny_qwen2_5_vl_train_save_load_equal(tmp_path):
    model = tiny_model("qwen2_5_vl")
    cfg = PHMConfig(towers=("language", "vision"))
    targets = inject_phm(model, cfg)
    model, history = distill(model, _batches(), DistillConfig(steps=4, **FAST), state_dir=tmp_path / "state")
    assert len(history) == 4
    save_phm_checkpoint(model, cfg, targets, tmp_path / "ck")
    reloaded = load(tmp_path / "ck")
    assert sum(isinstance(m, PHMLinear) for m in reloaded.modules()) == len(targets) == 12
    ids = _batches(2).batch(1)["input_ids"]
    torch.testing.assert_close(_logits(reloaded, ids), _logits(model, ids), rtol=0, atol=0)
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["step"] == 4 and state["distill"]["steps"] == 4


@pytest.mark.parametrize("kwargs,message", [
    (dict(steps=-1), "steps must be an integer"),
    (dict(schedule="sudden"), "schedule must be"),
    (dict(fade_fraction=1.5), "fade_fraction must be in"),
    (dict(objective="mse"), "objective must be one of"),
    (dict(device="tpu"), "device must be"),
    (dict(order="sideways"), "order must be"),
])
def test_distill_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**kwargs)


def test_distill_config_json_round_trip():
    cfg = DistillConfig(steps=7, kd_weight_start=0.0, kd_weight=0.7)
    assert DistillConfig.from_dict(json.loads(cfg.to_json())) == cfg
    # a run saved before group_by_length existed batched in plain shuffled order: resumed, it still does
    old = {k: v for k, v in cfg.to_dict().items() if k != "group_by_length"}
    assert DistillConfig.from_dict(old).group_by_length is False and cfg.group_by_length is True


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert", "qwen2_5_vl"])
def test_gradient_checkpointing_trains_exactly_the_same(arch):
    """Recomputing every transformer layer in the backward changes memory, not one number."""
    runs = []
    for checkpointing in (False, True):
        model = tiny_model(arch)
        inject_phm(model, PHMConfig(init="projection"))
        runs.append(distill(model, _batches(), DistillConfig(steps=4, recon_weight=0.5,
                                                             gradient_checkpointing=checkpointing, **FAST)))
    (plain, log_a), (recomputed, log_b) = runs
    assert [h["loss"] for h in log_a] == [h["loss"] for h in log_b]
    for (name, a), (_, b) in zip(plain.state_dict().items(), recomputed.state_dict().items()):
        assert torch.equal(a, b), name


def test_bf16_base_keeps_fp32_masters_and_trains():
    """base_dtype bfloat16: the frozen weights are held in bf16, the cores train as fp32 masters (and
    stay fp32 in the result), and the run follows the fp32 one closely (the teacher itself is
    rounded to bf16)."""
    logs, models = [], []
    for dtype in ("float32", "bfloat16"):
        model = tiny_model("llama")
        inject_phm(model, PHMConfig(init="projection"))
        trained, log = distill(model, _batches(), DistillConfig(steps=6, recon_weight=0.5, base_dtype=dtype, **FAST))
        logs.append([h["loss"] for h in log])
        models.append(trained)
    params = dict(models[1].named_parameters())
    assert {p.dtype for n, p in params.items() if n.endswith(".cores")} == {torch.float32}
    assert {p.dtype for n, p in params.items() if "self_attn" in n or "norm" in n} == {torch.bfloat16}
    assert logs[1] == pytest.approx(logs[0], rel=0.05, abs=1e-3)


@pytest.mark.parametrize("scale,schedule,warned", [(1.0, "progressive", True), (10.0, "progressive", False),
                                                   (1.0, "abrupt", False)],
                         ids=["small-weights", "smollm2-scale", "no-fade"])
def test_core_step_warning_follows_the_cores_scale(caplog, scale, schedule, warned):
    """A core_lr that is a large fraction of the cores' RMS (a tiny model at the 0.02 init scale: the
    scale of a 0.63 B Qwen2) is warned about where λ fades, with the --core-lr that keeps ~1.5 %
    steps; the same model with weights 10x larger (SmolLM2's scale) is not, nor an abrupt run."""
    from phm.trainer.distill import CORE_STEP_WARN, core_step_ratio

    model = tiny_model("llama")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    inject_phm(model, PHMConfig(init="projection"))
    ratio, rms = core_step_ratio(model, 2e-3)
    assert (ratio > CORE_STEP_WARN) == (scale == 1.0) and ratio == pytest.approx(2e-3 / rms)
    with caplog.at_level("WARNING", logger="phm.trainer.distill"):
        distill(model, _batches(), DistillConfig(steps=1, progress=False, calibrate_init=False, tensorboard=False,
                                                 checkpoint_every=0, schedule=schedule))
    warnings = [r.getMessage() for r in caplog.records if "of the PHM cores' RMS" in r.getMessage()]
    assert bool(warnings) == warned
    if warned:
        assert f"--core-lr {0.015 * rms:.1e}" in warnings[0]
