"""Memory planner against hand-computed budgets."""

import pytest

from phm.export.memory_plan import DEVICES, GiB, RUNTIME_OVERHEAD, ModelFootprint, plan_memory
from phm.trainer import PHMConfig, drop_dense, inject_phm
from tinymodels import tiny_model

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


# Tiny Llama (tests/tinymodels.py: vocab 256, hidden 32, MLP 64, 2 layers, 4 heads / 2 KV heads of 8, 256
# positions, tied head) with PHM n=2, B=2 MLPs, counted by hand:
#   embedding 256·32 = 8192; attention per layer q 32·32 + k 32·16 + v 32·16 + o 32·32 = 3072 (linear);
#   PHM cores per layer 3 · 32·64·B/n² = 3072; norms 2·32 per layer + 32 final = 160 (other).
TINY_PHM = dict(linear=2 * 3072, phm=2 * 3072, embedding=8192, other=160)
TINY_PARAMS = sum(TINY_PHM.values())  # 20,640
TINY_KV_FP32 = 2 * 2 * 2 * 8 * 256 * 4  # K+V · layers · kv heads · head dim · 256 positions · 4 B = 65,536
TINY_ACT_FP32 = 256 * (2 * 32 + 2 * 64) * 4 + 256 * 4 + GiB // 2  # live set + fp32 logits row + workspace


def test_tiny_phm_footprint_by_hand(store):
    from phm.trainer import load

    fp = ModelFootprint.from_model(load(store.checkpoint("llama", True)))
    assert (fp.linear_params, fp.phm_params, fp.embedding_params, fp.other_params) == tuple(TINY_PHM.values())
    assert fp.weight_bytes("fp16") == TINY_PARAMS * 2
    assert fp.weight_bytes("int8") == 6144 * 1 + 6144 * 1 + 8192 * 2 + 160 * 2  # embeddings/norms stay fp16


def test_export_manifest_records_the_plan(store):
    """phm-export's default target (agx-orin, fp32, context = min(2048, 256 positions))."""
    import json

    m = json.loads((store.artifacts("llama", True) / "manifest.json").read_text())
    plan = m["memory_plan"]
    assert plan["bytes"] == {"weights": TINY_PARAMS * 4, "kv_cache": TINY_KV_FP32, "activations": TINY_ACT_FP32,
                             "overhead": RUNTIME_OVERHEAD, "usable": int(61 * GiB),
                             "total": TINY_PARAMS * 4 + TINY_KV_FP32 + TINY_ACT_FP32 + RUNTIME_OVERHEAD}
    assert (plan["target"], plan["precision"], plan["context"], plan["batch"], plan["verdict"]) == \
        ("agx-orin", "fp32", 256, 1, "fits")
    assert m["plugins"] == [{"name": "PHMFFN", "namespace": "phm", "version": "1"}]


def test_export_refuses_before_writing_anything(store, tmp_path):
    """1 GiB desktop → 0.5 GiB usable; the tiny model needs 1.2503 GiB (mostly workspace + runtime)."""
    from phm.export import ExportConfig, ExportError, export_model

    with pytest.raises(ExportError) as err:
        export_model(store.checkpoint("llama", True), ExportConfig(target="desktop", device_gib=1), tmp_path / "out")
    total = TINY_PARAMS * 4 + TINY_KV_FP32 + TINY_ACT_FP32 + RUNTIME_OVERHEAD
    assert f"{total / GiB:.2f}" == "1.25" and "needs 1.25 GiB" in str(err.value)
    assert "device has 0.50 GiB usable" in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_near_limit_warns_and_context_and_precision_size_the_plan(store, caplog):
    from phm.export import ExportConfig
    from phm.export.api import memory_plan_for
    from phm.trainer import load

    model = load(store.checkpoint("llama", True))
    with caplog.at_level("WARNING"):
        plan = memory_plan_for(model, ExportConfig(target="desktop", device_gib=1.9))  # 1.2503 of 1.4 GiB
    assert plan.verdict == "near-limit" and abs(plan.fraction - 1342523008 / (1.4 * GiB)) < 1e-6
    assert "near the memory limit" in caplog.text
    short = memory_plan_for(model, ExportConfig(fp16=True, max_sequence=64, opt_sequence=64))
    assert short.context == 64 and short.kv_cache == 2 * 2 * 2 * 8 * 64 * 2 and short.weights == TINY_PARAMS * 2
    assert short.activations == 64 * (2 * 32 + 2 * 64) * 2 + 256 * 4 + GiB // 2
    assert memory_plan_for(model, ExportConfig(max_sequence=4096)).context == 256  # clipped to the positions


def test_tiny_device_memory_is_refused_by_the_config():
    from phm.export import ExportConfig

    with pytest.raises(ValueError, match="must exceed the 1.5 GiB the OS of orin-nano keeps"):
        ExportConfig(target="orin-nano", device_gib=1.5)
    with pytest.raises(ValueError, match="target must be one of"):
        ExportConfig(target="orin")  # a name for no module: refused, never guessed
