"""Budget mode (budget.py): per-block sensitivity of the calibrated init, the greedy choice under a
parameter budget, and `phm-train --target-size` end to end (choice recorded, resumable)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from phm.trainer import PHMConfig
from phm.trainer.inject import phm_wrappers
from phm.trainer.budget import choose, sensitivity
from phm.trainer.cli import main
from tinymodels import save_char_tokenizer, save_tiny_model, tiny_model
from trainkit import random_batches


def _measured(arch="llama"):
    model = tiny_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measured = sensitivity(model, PHMConfig(), [random_batches().batch(i) for i in range(3)])
    assert not phm_wrappers(model) and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    return model, measured


def test_sensitivity_falls_with_b_and_leaves_the_model_dense():
    _, (errors, params, targets) = _measured()
    assert set(errors) == {t.block for t in targets} and len(errors) == 2
    for block, per_b in errors.items():
        assert sorted(per_b) == [1, 2, 3, 4]
        assert per_b[1] > per_b[2] > per_b[3] > per_b[4] > -1e-6  # more bases, a better fit (KL ≥ 0 up to rounding)
        assert per_b[4] < 1e-4 * per_b[1]  # four 2 × 2 bases span every block: only the ridge's pull is left
        assert params[block][2] == 2 * params[block][1] - sum(t.out_features for t in targets if t.block == block
                                                                and t.bias)


def test_choice_meets_the_budget_and_prefers_sensitive_blocks():
    model, measured = _measured()
    errors, params, _ = measured
    original = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    small = choose(measured, original, int(0.75 * original))
    assert small.params <= small.target_params and set(small.num_bases.values()) <= {1, 2, 3, 4}
    upgrade = max(params[b][k + 1] - params[b][k] for b in params for k in (1, 2, 3))
    assert small.target_params - small.params < upgrade  # nothing affordable left unspent
    full = choose(measured, original, original)
    assert set(full.num_bases.values()) == {4}
    assert full.phm_config(PHMConfig()).layer_num_bases == {b.replace(".", r"\."): 4 for b in full.num_bases}
    with pytest.raises(ValueError, match="below the smallest PHM model .* reachable range is"):
        choose(measured, original, int(0.1 * original), "0.1")


def test_cli_target_size_records_its_choice_and_resumes(tmp_path):
    llama = save_char_tokenizer(save_tiny_model("llama", tmp_path / "llama"))
    data = tmp_path / "d.txt"
    data.write_text("".join(f"line {i} of text for the budget\n" for i in range(40)))
    out = tmp_path / "out"
    args = [str(llama), "--data", str(data), "--out", str(out), "--steps", "3", "--batch-size", "4",
            "--max-length", "24", "--target-size", "0.8"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    budget = json.loads((out / "budget.json").read_text())
    phm = json.loads((out / "phm_config.json").read_text())
    chosen = phm["phm"]["layer_num_bases"]
    assert chosen and sorted(chosen.values()) == sorted(budget["num_bases"].values())
    assert {layer["num_bases"] for layer in phm["layers"]} == set(chosen.values())
    assert budget["params"] <= budget["target_params"] == int(0.8 * budget["original_params"])
    again = CliRunner().invoke(main, args + ["--resume"])
    assert again.exit_code == 0, again.output
