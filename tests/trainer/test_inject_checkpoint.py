"""Substitution over real HF architectures (tiny random configs), λ semantics, checkpoint round trip."""

import pytest
import torch
from torch import nn

from phm.trainer import (PHMConfig, PHMLinear, PHMResidualLinear, drop_dense, inject_phm, load, phm_targets,
                         save_phm_checkpoint, set_lambda, teacher_mode)
from tinymodels import TINY_ARCHS, tiny_model

EXPECTED_TARGETS = {"llama": 6, "qwen2": 6, "gpt2": 4, "bert": 4, "qwen2_vl": 10, "qwen2_5_vl": 12, "llava": 10,
                    "llava_dinov2": 10}


def _ids(seed=0, length=7):
    return torch.randint(3, 200, (2, length), generator=torch.Generator().manual_seed(seed))


def _out(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_every_mlp_linear_is_targeted(arch):
    model = tiny_model(arch)
    targets = phm_targets(model, PHMConfig(towers=("language", "vision")))
    assert len(targets) == EXPECTED_TARGETS[arch]
    assert all(t.num_bases == 2 for t in targets)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert", "qwen2_5_vl"])
def test_lambda_zero_is_exact_and_lambda_one_is_phm_only(arch):
    model = tiny_model(arch)
    ids = _ids()
    reference = _out(model, ids)
    inject_phm(model, PHMConfig())
    torch.testing.assert_close(_out(model, ids), reference, rtol=0, atol=0)  # λ = 0: bit-exact
    set_lambda(model, 1.0)
    mixed = _out(model, ids)
    with teacher_mode(model):
        torch.testing.assert_close(_out(model, ids), reference, rtol=0, atol=0)
    assert not torch.allclose(mixed, reference)  # B=2 projection is lossy: PHM really ran
    drop_dense(model)
    assert not any(isinstance(m, PHMResidualLinear) for m in model.modules())
    torch.testing.assert_close(_out(model, ids), mixed, rtol=1e-6, atol=1e-6)


def test_interpolation_is_linear_in_lambda():
    model = tiny_model("llama")
    inject_phm(model, PHMConfig())
    layer = model.model.layers[0].mlp.down_proj
    x = torch.randn(3, 64)
    layer.lam = 0.25
    expected = 0.75 * layer.base_layer(x) + 0.25 * layer.phm(x)
    torch.testing.assert_close(layer(x), expected)


def test_top_k_b3_preset_and_overrides():
    model = tiny_model("qwen2_5_vl")
    targets = phm_targets(model, PHMConfig(towers=("language", "vision"), top_k_b3=1,
                                           layer_num_bases={r".*visual.*down_proj": 1}))
    by_name = {t.name: t.num_bases for t in targets}
    assert by_name["model.language_model.layers.1.mlp.gate_proj"] == 3
    assert by_name["model.language_model.layers.0.mlp.gate_proj"] == 2
    assert by_name["model.visual.blocks.0.mlp.gate_proj"] == 2  # top-K applies to language layers
    assert by_name["model.visual.blocks.1.mlp.down_proj"] == 1


def test_layer_num_bases_pattern_that_matches_nothing_is_an_error():
    """As peft refuses target_modules that match nothing: a typo must not train every layer at the
    default B in silence."""
    model = tiny_model("qwen2")
    with pytest.raises(ValueError, match=r"pattern '\.\*down_porj' matches no replaced layer.*model\.layers\.0"):
        phm_targets(model, PHMConfig(layer_num_bases={r".*down_proj": 1, r".*down_porj": 1}))
    with pytest.raises(ValueError, match="matches no replaced layer"):  # a vision pattern, vision not replaced
        phm_targets(tiny_model("qwen2_5_vl"), PHMConfig(layer_num_bases={r".*visual.*": 1}))


def test_projection_init_beats_random_init():
    model = tiny_model("llama")
    ids = _ids()
    reference = _out(model, ids)
    errors = {}
    for init in ("projection", "random"):
        m = tiny_model("llama")
        inject_phm(m, PHMConfig(init=init))
        set_lambda(m, 1.0)
        errors[init] = (_out(m, ids) - reference).norm().item()
    assert errors["projection"] < errors["random"]


def test_unknown_architecture_lists_supported():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "mamba"})()
    with pytest.raises(ValueError, match=r"unsupported architecture 'mamba'; supported: .*llama.*qwen2_5_vl"):
        phm_targets(Toy(), PHMConfig())


def test_indivisible_layer_is_named():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"layer model\.layers\.0\.mlp\.gate_proj: shape \(out=64, in=32\) "
                                         r"is not divisible by n=3"):
        phm_targets(model, PHMConfig(n=3, num_bases=2, bases="units"))


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_bases=5), "num_bases must be in 1..4"),
    (dict(towers=("audio",)), "towers must be a non-empty subset"),
    (dict(projections=("qkv",)), "projections must be a non-empty subset"),
    (dict(init="zeros"), "init must be"),
    (dict(bases="nope"), "unknown basis family"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PHMConfig(**kwargs)


def test_config_json_round_trip():
    cfg = PHMConfig(top_k_b3=2, towers=("language", "vision"), layer_num_bases={"x": 1})
    assert PHMConfig.from_dict(__import__("json").loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="format_version"):
        PHMConfig.from_dict({"n": 2})


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "gpt2", "bert"])
def test_checkpoint_round_trip_outputs_equal(arch, tmp_path):
    model = tiny_model(arch)
    cfg = PHMConfig(towers=("language", "vision"))
    targets = inject_phm(model, cfg)
    drop_dense(model)
    save_phm_checkpoint(model, cfg, targets, tmp_path / "ck")
    reloaded = load(tmp_path / "ck")
    assert sum(isinstance(m, PHMLinear) for m in reloaded.modules()) == len(targets)
    ids = _ids(1)
    torch.testing.assert_close(_out(reloaded, ids), _out(model, ids), rtol=0, atol=0)
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["ck"]  # no temp dirs left behind


def test_save_refuses_wrappers_and_existing_dir(tmp_path):
    model = tiny_model("llama")
    cfg = PHMConfig()
    targets = inject_phm(model, cfg)
    with pytest.raises(ValueError, match="drop_dense"):
        save_phm_checkpoint(model, cfg, targets, tmp_path / "ck")
    drop_dense(model)
    save_phm_checkpoint(model, cfg, targets, tmp_path / "ck")
    with pytest.raises(FileExistsError):
        save_phm_checkpoint(model, cfg, targets, tmp_path / "ck")


def test_plain_hf_dir_loads_dense(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "dense")
    ids = _ids()
    torch.testing.assert_close(_out(load(tmp_path / "dense"), ids), _out(model, ids))


@pytest.mark.parametrize("damage,message", [
    ("missing", "does not exist"),
    ("no_config", "has no config.json"),
    ("truncated", "cannot load"),
    ("bad_phm_json", "is not valid JSON"),
])
def test_bad_checkpoint_dirs_give_clear_errors(tmp_path, damage, message):
    model = tiny_model("llama")
    cfg = PHMConfig()
    targets = inject_phm(model, cfg)
    drop_dense(model)
    ck = save_phm_checkpoint(model, cfg, targets, tmp_path / "ck")
    if damage == "missing":
        ck = tmp_path / "nope"
    elif damage == "no_config":
        (ck / "config.json").unlink()
    elif damage == "truncated":
        data = (ck / "model.safetensors").read_bytes()
        (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "bad_phm_json":
        (ck / "phm_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=message):
        load(ck)
