"""GPTQ rounding (export/gptq.py, `--int4-method gptq`): the algorithm against round-to-nearest on
structured calibration rows, the layouts it hands to the graph (dense blocks either orientation,
PHM cores split back from A_catᵀ), and an end-to-end export whose graph holds GPTQ's codes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from phm.export import Int4Config
from phm.export.awq import mixed_rows
from phm.export.gptq import RoundingStore, gptq_dense, gptq_phm, gptq_round, rtn_scales
from phm.export.quantize_int4 import dequantize_blocks, pack_blocks, quantize_blocks_int4
from phm.trainer.hypercomplex import basis_family
from phm.trt_plugins.quant import quantize_cores_int4, unpack_int4


def _correlated_rows(rows: int, k: int, seed: int = 0) -> np.ndarray:
    """Calibration-like rows: strongly correlated channels (a few latent directions) and a few
    large-magnitude channels, where GPTQ's error compensation has something to work with."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((rows, k // 4)) @ rng.standard_normal((k // 4, k))
    x = latent + 0.1 * rng.standard_normal((rows, k))
    x[:, rng.choice(k, 4, replace=False)] *= 8.0
    return x.astype(np.float32)


def test_diagonal_hessian_is_round_to_nearest():
    """With independent input channels (H diagonal) there is no error to move: GPTQ's codes are RTN's."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 24)).astype(np.float32)
    q, scales = gptq_round(w, np.diag(rng.uniform(0.5, 2.0, 64)).astype(np.float32), 32)
    packed, rtn_scales_ = quantize_blocks_int4(w, 0, 32)
    np.testing.assert_array_equal(scales, rtn_scales_)
    np.testing.assert_array_equal(pack_blocks(q, scales, 0)[0], packed)


def test_gptq_beats_round_to_nearest_on_correlated_rows():
    rows = _correlated_rows(1536, 128)
    x, held_out = rows[:1024], rows[1024:]
    w = np.random.default_rng(2).standard_normal((128, 96)).astype(np.float32)
    res = gptq_dense(x, w, 32)
    assert res.q.dtype == np.int8 and np.abs(res.q).max() <= 7 and res.scales.shape == (4, 96)
    np.testing.assert_array_equal(res.scales, rtn_scales(torch.from_numpy(w), 32).numpy())  # static groups
    assert res.error < 0.8 * res.rtn_error, (res.error, res.rtn_error)
    # the reported error is the codes' own, on the rows they were fitted to; on rows of the same
    # distribution they never saw GPTQ still wins
    deq = res.q * np.repeat(res.scales, 32, axis=0)
    rtn = np.clip(np.round(w / np.repeat(res.scales, 32, axis=0)), -7, 7) * np.repeat(res.scales, 32, axis=0)
    assert np.linalg.norm(held_out @ (deq - w)) < np.linalg.norm(held_out @ (rtn - w))


@pytest.mark.parametrize("axis", [0, 1])
def test_pack_blocks_is_quantize_blocks_int4s_layout(axis):
    """Codes (K, N) and scales (K/G, N) → the bytes and scales of a weight stored (K, N) (axis 0) or
    transposed (N, K) (a Gemm's transB, axis 1), as quantize_blocks_int4 writes them."""
    w = np.random.default_rng(3).standard_normal((64, 40)).astype(np.float32)   # (K, N)
    scales = rtn_scales(torch.from_numpy(w), 16).numpy()
    q = np.clip(np.round(w / np.repeat(scales, 16, axis=0)), -7, 7).astype(np.int8)
    stored = w if axis == 0 else w.T
    want_packed, want_scales = quantize_blocks_int4(stored, axis, 16, np.float16)
    packed, got_scales = pack_blocks(q, scales, axis, np.float16)
    np.testing.assert_array_equal(packed, want_packed)
    np.testing.assert_array_equal(got_scales, want_scales)
    np.testing.assert_allclose(dequantize_blocks(packed, got_scales, stored.shape, axis, 16),
                               dequantize_blocks(want_packed, want_scales, stored.shape, axis, 16))


def test_phm_cores_split_back_in_the_spec_layout():
    """gate and up (m, B, k) solved together on the mixed rows z: each part's scales are
    quantize_cores_int4's, its codes mostly within ±1 of RTN's, and the parts put back together are exactly
    the solution whose error was measured (a transposed or shifted split would not be)."""
    n, nb, k, m = 2, 2, 64, 48
    bases = basis_family(n, nb).numpy()
    rng = np.random.default_rng(4)
    cores = [rng.standard_normal((m, nb, k)).astype(np.float32), rng.standard_normal((m + 16, nb, k)).astype(np.float32)]
    x = _correlated_rows(512, n * k)
    parts, res = gptq_phm(x, cores, bases, 32)
    for c, (q, scales) in zip(cores, parts):
        packed, rtn = quantize_cores_int4(torch.from_numpy(c), 32)
        np.testing.assert_array_equal(scales, rtn.numpy())
        assert q.shape == c.shape and np.mean(np.abs(q - unpack_int4(packed).numpy()) <= 1) > 0.9
    deq = [torch.from_numpy(q * np.repeat(s, 32, axis=-1)) for q, s in parts]
    a_cat_t = torch.cat([d.reshape(d.shape[0], -1).T for d in deq], dim=1).numpy()
    z = mixed_rows(x, bases, nb)
    ref = z @ np.concatenate([c.reshape(c.shape[0], -1).T for c in cores], axis=1)
    assert abs(np.linalg.norm(z @ a_cat_t - ref) / np.linalg.norm(ref) - res.error) < 1e-5
    assert res.error < res.rtn_error


def test_rounding_store_round_trips_and_cleans_up():
    store = RoundingStore()
    q, s = np.arange(-7, 8, dtype=np.int8).reshape(3, 5), np.ones((1, 5), np.float32)
    store.put(("node", 3), q, s)
    got_q, got_s = store.get(("node", 3))
    np.testing.assert_array_equal(got_q, q)
    np.testing.assert_array_equal(got_s, s)
    assert ("node", 3) in store and len(store) == 1
    folder = store._dir.name
    del store, got_q, got_s
    import gc
    import os
    gc.collect()
    assert not os.path.exists(folder)


def _int4_initializers(path) -> dict:
    model = onnx.load(str(path))
    return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer
            if i.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.INT8) or i.name.endswith("scale")
            or i.name.endswith("scales")}


def test_gptq_export_holds_gptq_codes_with_rtns_scales(store):
    """A PHM llama exported with --int4-method gptq: every dense linear and every PHM projection was
    rounded by GPTQ (the summary counts them), with the same scales as the round-to-nearest export
    and different codes; the graph's outputs stay as close to the float model's as RTN's are."""
    from phm.runtime.ort_backend import OrtBackend

    gptq = store.artifacts("llama_gqa", True, int4=Int4Config(group=32, method="gptq"))
    rtn = store.artifacts("llama_gqa", True, int4=Int4Config(group=32, method="rtn"))
    manifest = json.loads((gptq / "manifest.json").read_text())
    summary = manifest["graphs"]["decoder"]["int4"]
    assert summary["method"] == "gptq"
    # 2 layers × (q, k, v, o) dense + 2 PHMFFN × (gate, up, down)
    assert summary["dense_int4"] == 8 and summary["phm_int4_nodes"] == 2 and summary["gptq_rounded"] == 14
    file = manifest["graphs"]["decoder"]["trt_file"]
    ours, theirs = _int4_initializers(gptq / file), _int4_initializers(rtn / file)
    scales = [n for n in ours if "scale" in n]
    codes = [n for n in ours if n not in scales]
    assert scales and codes and set(ours) == set(theirs)
    for name in scales:
        np.testing.assert_array_equal(ours[name], theirs[name])
    assert all(not np.array_equal(ours[n], theirs[n]) for n in codes)
    ids = np.array([[5, 17, 33, 9, 101, 7, 44, 12]])
    logits = {}
    for name, art in (("gptq", gptq), ("rtn", rtn), ("float", store.artifacts("llama_gqa", True))):
        backend = OrtBackend.from_artifacts(art)
        logits[name] = backend.prefill(ids, np.ones_like(ids))
    err = {m: float(np.abs(logits[m] - logits["float"]).max()) for m in ("gptq", "rtn")}
    assert 0 < err["gptq"] < 3 * err["rtn"], err
