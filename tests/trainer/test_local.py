"""Layer-wise local distillation (trainer/local.py) on tiny real-architecture models."""

import pytest
import torch

from phm.trainer import PHMConfig, inject_phm, set_lambda
from phm.trainer.distill import DistillConfig, distill
from phm.trainer.inject import phm_wrappers, teacher_mode
from phm.trainer.local import local_distill, phm_layer_stacks
from tinymodels import tiny_model

from trainkit import FAST
from trainkit import random_batches as _batches


def _last_hidden_error(model, batches) -> float:
    """Mean per-token ‖h_s − h_t‖²/‖h_t‖² of the last layer's output, student (λ = 1) vs teacher."""
    errs = []
    with torch.no_grad():
        for b in batches:
            s = model(**b, output_hidden_states=True).hidden_states[-1]
            with teacher_mode(model):
                t = model(**b, output_hidden_states=True).hidden_states[-1]
            m = b["attention_mask"].bool()
            errs.append((((s - t) ** 2).sum(-1) / (t ** 2).sum(-1))[m].mean())
    return torch.stack(errs).mean().item()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert", "llava"])  # llava: its forward makes a KV cache
def test_local_stage_fits_every_layer(arch):
    model = tiny_model(arch)
    inject_phm(model, PHMConfig())  # projection init: the start the trainer uses
    set_lambda(model, 1.0)
    data = _batches()
    batches = [data.batch(i) for i in range(4)]
    dense_before = {n: p.clone() for n, p in model.named_parameters() if ".phm." not in n}
    before = _last_hidden_error(model, batches)
    logs = local_distill(model, batches, epochs=8, lr=1e-2)
    after = _last_hidden_error(model, batches)
    assert after < 0.5 * before, (before, after)
    assert [e["layer"].rsplit(".", 1)[1] for e in logs] == ["0", "1"] and all(e["stage"] == "local" for e in logs)
    assert all(w.lam == 1.0 for _, w in phm_wrappers(model))
    # only PHM cores/biases moved: the teacher (dense weights, attention, norms) is untouched
    assert all(torch.equal(p, dense_before[n]) for n, p in model.named_parameters() if ".phm." not in n)


def test_layer_stacks_in_forward_order():
    model = tiny_model("qwen2_5_vl")
    inject_phm(model, PHMConfig(towers=("language", "vision")))
    stacks = phm_layer_stacks(model)
    assert [p.rsplit(".", 1)[1] for p, _ in stacks] == ["blocks", "layers"]  # vision tower runs first
    assert all(idx == list(range(len(idx))) and idx for _, idx in stacks)


def test_distill_with_local_stage_logs_and_resumes(tmp_path):
    cfg = DistillConfig(steps=4, schedule="abrupt", local_epochs=2, local_batches=3, checkpoint_every=2, **FAST)
    _, history = distill(_fresh_llama(), _batches(), cfg, state_dir=tmp_path / "a")
    assert [h["stage"] for h in history[:2]] == ["local", "local"] and history[2]["step"] == 1

    class Stop(Exception):
        pass

    class Dying:  # killed after the step-2 checkpoint: resume must not redo the local stage
        def __init__(self, data):
            self.data = data

        def __len__(self):
            return len(self.data)

        def batch(self, step):
            if step == 3:
                raise Stop
            return self.data.batch(step)

    with pytest.raises(Stop):
        distill(_fresh_llama(), Dying(_batches()), cfg, state_dir=tmp_path / "b")
    resumed, history_c = distill(_fresh_llama(), _batches(), cfg, state_dir=tmp_path / "b", resume=True)
    timeless = lambda h: [{k: v for k, v in e.items() if k != "elapsed_s"} for e in h]  # noqa: E731
    assert timeless(history_c) == timeless(history)
    again, _ = distill(_fresh_llama(), _batches(), cfg, state_dir=tmp_path / "c")
    ids = torch.randint(3, 250, (2, 9))
    with torch.no_grad():
        assert torch.equal(resumed(input_ids=ids).logits, again(input_ids=ids).logits)


def _fresh_llama():
    model = tiny_model("llama")
    inject_phm(model, PHMConfig())
    return model


def test_teacher_inputs_fit_each_layer_alone():
    """inputs="teacher": layer 1 is fitted on the dense model's layer-0 output, so what layer 0's cores
    are does not change layer 1's fit; with student inputs it does."""
    batches = [_batches().batch(i) for i in range(2)]

    def fitted_layer1(inputs, perturb):
        model = tiny_model("llama")
        inject_phm(model, PHMConfig())
        set_lambda(model, 1.0)
        if perturb:  # different layer-0 cores: the student's input to layer 1 changes
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.startswith("model.layers.0.") and ".phm." in name:
                        p.mul_(1.5)
        local_distill(model, batches, epochs=2, lr=1e-2, inputs=inputs)
        return {n: p.detach().clone() for n, p in model.named_parameters()
                if n.startswith("model.layers.1.") and ".phm." in n}

    for inputs, same in (("teacher", True), ("student", False)):
        a, b = fitted_layer1(inputs, False), fitted_layer1(inputs, True)
        assert a and all(torch.equal(a[n], b[n]) for n in a) == same, inputs
    with pytest.raises(ValueError, match="local inputs must be one of"):
        local_distill(tiny_model("llama"), batches, epochs=1, lr=1e-2, inputs="dense")
    with pytest.raises(ValueError, match="local_inputs must be"):
        DistillConfig(local_inputs="dense")


@pytest.mark.parametrize("arch", ["llama", "qwen2_5_vl"])
def test_host_cached_local_stage_fits_exactly_as_device_cached(arch):
    """cache="host": the cached layer inputs and targets live in host memory and each batch's is moved
    to the device when used (here both are the CPU: the same fit, bit for bit, and the tensors the
    stage keeps are host tensors)."""
    results = []
    for cache in ("device", "host"):
        model = tiny_model(arch)
        inject_phm(model, PHMConfig())
        data = _batches()
        logs = local_distill(model, [data.batch(i) for i in range(3)], epochs=2, lr=1e-2, cache=cache)
        results.append((logs, {n: p.clone() for n, p in model.named_parameters() if ".phm." in n}))
    (logs_d, cores_d), (logs_h, cores_h) = results
    assert logs_d == logs_h
    assert all(torch.equal(cores_d[n], cores_h[n]) for n in cores_d)
    with pytest.raises(ValueError, match="local cache must be one of"):
        local_distill(tiny_model("llama"), [], 1, 1e-2, cache="disk")
