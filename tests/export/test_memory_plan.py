"""Memory planner against hand-computed budgets."""

import pytest

from phm.export.memory_plan import DEVICES, GiB, RUNTIME_OVERHEAD, ModelFootprint, plan_memory
from phm.trainer import PHMConfig, drop_dense, inject_phm
from phm.trainer.tiny_models import tiny_model

# Qwen2.5-VL-7B language model, roughly: 28 layers, 4 KV heads × 128, hidden 3584, MLP 18944.
QWEN7B = ModelFootprint(linear_params=6_530_000_000, phm_params=0, embedding_params=545_000_000,
                        other_params=200_000, num_layers=28, kv_heads=4, head_dim=128, hidden_size=3584,
                        intermediate_size=18944, vocab_size=152064)


def test_kv_cache_and_weights_hand_computed():
    plan = plan_memory(QWEN7B, "fp16", "agx-orin", context=4096, batch=1)
    assert plan.kv_cache == 2 * 28 * 4 * 128 * 4096 * 2  # = 234,881,024 bytes = 0.22 GiB
    assert plan.weights == (6_530_000_000 + 545_000_000 + 200_000) * 2
    live = 4096 * (2 * 3584 + 2 * 18944) * 2 + 152064 * 4
    assert plan.activations == int(live + 0.5 * GiB)
    assert plan.overhead == RUNTIME_OVERHEAD
    assert plan.usable == int(61 * GiB)
    assert plan.verdict == "fits"  # 13.2 + 0.22 + 0.87 + 0.75 ≈ 15.0 GiB of 61


def test_orin_nano_refuses_fp16_7b_int4_fits_then_warns():
    fp16 = plan_memory(QWEN7B, "fp16", "orin-nano", context=1024)
    assert fp16.verdict == "does-not-fit"  # 13.2 GiB of weights alone vs 6.5 usable
    assert "does-not-fit" in fp16.summary() and "6.50 GiB usable" in fp16.summary()
    # int4: 3.04 GiB linear + 1.02 fp16 embedding + KV 0.05 + act 0.59 + 0.75 = 5.45 of 6.5 (84 %)
    assert plan_memory(QWEN7B, "int4", "orin-nano", context=1024).verdict == "fits"
    # 4k context: KV 0.22 + act 0.84 → 5.87 of 6.5 (90 %): warn
    near = plan_memory(QWEN7B, "int4", "orin-nano", context=4096)
    assert near.verdict == "near-limit" and 0.89 < near.fraction < 0.91


def test_phm_reduces_weight_bytes_by_its_ratio():
    model = tiny_model("llama")
    dense = ModelFootprint.from_model(model)
    inject_phm(model, PHMConfig(num_bases=2))
    drop_dense(model)
    phm = ModelFootprint.from_model(model)
    mlp = 3 * 32 * 64  # gate, up, down of one layer
    assert dense.linear_params - phm.linear_params == 2 * mlp
    assert phm.phm_params == 2 * mlp // 2  # B/n² = 1/2
    assert dense.embedding_params == 256 * 32  # tied lm_head counted once


def test_device_override_and_errors():
    plan = plan_memory(QWEN7B, "int8", "desktop", context=2048, device_gib=8)
    assert plan.usable == int(7.5 * GiB)
    with pytest.raises(ValueError, match="unknown target 'tx2'; known: orin-nano"):
        plan_memory(QWEN7B, target="tx2")
    with pytest.raises(ValueError, match="unknown precision"):
        plan_memory(QWEN7B, precision="fp8")
    with pytest.raises(ValueError, match="context and batch"):
        plan_memory(QWEN7B, context=0)
    assert set(DEVICES) == {"orin-nano", "orin-nx", "agx-orin", "desktop"}
