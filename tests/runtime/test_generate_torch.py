"""The generation loop over the torch backend equals transformers' own generate (greedy)."""

import doctest

import numpy as np
import pytest
import torch

import phm.runtime.backend as backend_mod
import phm.runtime.sampling as sampling_mod
from phm.runtime.generate import GenerationConfig, generate
from phm.runtime.sampling import SamplingConfig, sample_next
from phm.runtime.torch_backend import TorchBackend
from phm.trainer import PHMConfig, drop_dense, inject_phm, set_lambda
from tinymodels import tiny_model


@pytest.mark.parametrize("mod", [backend_mod, sampling_mod])
def test_doctests(mod):
    assert doctest.testmod(mod).failed == 0


@pytest.mark.parametrize("arch,phm", [("llama", False), ("llama", True), ("gpt2", True), ("qwen2", False)])
def test_greedy_equals_hf_generate(arch, phm):
    model = tiny_model(arch)
    if phm:
        inject_phm(model, PHMConfig())
        set_lambda(model, 1.0)
        drop_dense(model)
    ids = np.array([[5, 17, 33, 9, 101]], dtype=np.int64)
    ours = generate(TorchBackend(model), ids, GenerationConfig(max_new_tokens=16, pad_id=0)).tokens
    with torch.no_grad():
        ref = model.generate(torch.from_numpy(ids), max_new_tokens=16, do_sample=False, min_new_tokens=16,
                             eos_token_id=None, pad_token_id=0)[:, ids.shape[1]:]
    np.testing.assert_array_equal(ours, ref.numpy())


def test_left_padded_batch_matches_single_rows():
    model = tiny_model("llama")
    backend = TorchBackend(model)
    a, b = [5, 17, 33, 9, 101], [44, 12]
    cfg = GenerationConfig(max_new_tokens=8)
    single = [generate(backend, np.array([r]), cfg).tokens[0] for r in (a, b)]
    batch = np.array([a, [0, 0, 0] + b])
    mask = np.array([[1] * 5, [0, 0, 0, 1, 1]])
    both = generate(backend, batch, cfg, attention_mask=mask).tokens
    np.testing.assert_array_equal(both[0], single[0])
    np.testing.assert_array_equal(both[1], single[1])


def test_stop_ids_end_rows_and_pad():
    model = tiny_model("llama")
    ids = np.array([[5, 17, 33]])
    first = generate(TorchBackend(model), ids, GenerationConfig(max_new_tokens=4)).tokens[0, 0]
    res = generate(TorchBackend(model), ids, GenerationConfig(max_new_tokens=4, stop_ids=(int(first),)))
    assert res.tokens.shape == (1, 1) and res.tokens[0, 0] == first
    assert res.timings.decode_tokens == 0


def test_sampling_seeded_and_top_p():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    cfg = SamplingConfig(temperature=1.0, top_p=0.7, seed=3)
    draws = [sample_next(logits, cfg, np.random.default_rng(i))[0] for i in range(200)]
    assert set(draws) == {0, 1}  # 0.5 + 0.3 ≥ 0.7: tokens 2, 3 are cut
    again = [sample_next(logits, cfg, np.random.default_rng(i))[0] for i in range(200)]
    assert draws == again
    frac0 = draws.count(0) / len(draws)
    assert 0.5 < frac0 < 0.75  # renormalised 0.5/0.8 = 0.625


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5)])
def test_sampling_config_validation(kwargs):
    with pytest.raises(ValueError):
        SamplingConfig(**kwargs)


def test_image_for_text_only_model_is_clear_error():
    from phm.runtime.backend import BackendError
    with pytest.raises(BackendError, match="no vision tower"):
        TorchBackend(tiny_model("llama")).prefill(np.array([[1, 2]]), np.array([[1, 1]]), images={"pixel_values": np.zeros(1)})
