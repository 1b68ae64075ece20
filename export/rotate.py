"""Orthogonal rotation of W8A8 activations (`phm-export --int8`, on by default): the matrix and its ONNX subgraph.

A W8A8 linear y = x·W (W: (K, N)) computes the same product as (x·Q)·(Qᵀ·W) for any orthogonal Q.
Quantizing x·Q instead of x is the incoherence trick of QuaRot (Ashkboos et al., 2024) and
SpinQuant: a rotation spreads the few outlier channels of x over all K channels, so one static
per-tensor scale (all that TensorRT's INT8 Q/DQ takes) fits every channel. Measured on SmolLM2-135M
(fake quantization of the 60 attention inputs and weights, 2,032 held-out positions, docs/int8.md
§ Rotation): top-1 agreement 89.0 % without rotation, 97.6 % with it; end to end (`--int8`) 94.4 →
96.5 % for the dense model and 94.1 → 97.2 % for its PHM student.

Q is applied online, in the graph, just before the activation's QuantizeLinear, and folded offline
into the INT8 weight (Qᵀ·W, then per-output-channel INT8). Nothing outside the quantized linear
changes: no norm folding, no rotated residual stream, so it works on any architecture and leaves
PHM layers (whose structure an arbitrary rotation of their input would break) untouched.

Q = R_m ⊗ H_p with K = m·p: H_p the normalised Walsh–Hadamard matrix of the largest power of two
p ≤ MAX_HADAMARD dividing K, R_m the orthonormal DCT-II basis (deterministic, no seed to store).
x·Q on the last axis is two small matmuls on x viewed as (…, m, p): Rᵀ·X·H. Cost per token:
K·(m + p) multiply-adds (SmolLM2: 576·(9 + 64) = 42k, against 576·960 for q/k/v), and the constants
are p² + m² floats shared by every tensor of the same K.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import onnx_graphsurgeon as gs

__all__ = ["MAX_HADAMARD", "apply", "factors", "graph_nodes", "matrix"]

MAX_HADAMARD = 256  # larger p: more spreading, but p² constants and K·p work per token


def _hadamard(p: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < p:  # Sylvester's construction
        h = np.block([[h, h], [h, -h]])
    return h / math.sqrt(p)


def _dct(m: int) -> np.ndarray:
    """Orthonormal DCT-II basis as columns (m, m)."""
    k, i = np.arange(m)[None, :], np.arange(m)[:, None]
    c = np.cos(math.pi * (i + 0.5) * k / m) * math.sqrt(2.0 / m)
    c[:, 0] /= math.sqrt(2.0)
    return c


@lru_cache(maxsize=None)
def _factors64(k: int) -> tuple[np.ndarray, np.ndarray]:
    if k < 1:
        raise ValueError(f"rotation size must be positive, got {k}")
    p = min(k & -k, MAX_HADAMARD)
    return _dct(k // p), _hadamard(p)


def factors(k: int) -> tuple[np.ndarray, np.ndarray]:
    """(R_m, H_p) float32 with Q = kron(R_m, H_p), m·p = k (the graph's constants)."""
    r, h = _factors64(k)
    return r.astype(np.float32), h.astype(np.float32)


def matrix(k: int) -> np.ndarray:
    """Q (k, k) float64, orthogonal: x·Q is what the graph computes for a row x."""
    return np.kron(*_factors64(k))


def apply(x: np.ndarray) -> np.ndarray:
    """x·Q on the last axis, computed as the graph does (Rᵀ·X·H on (…, m, p)), float32."""
    r, h = factors(x.shape[-1])
    xs = np.asarray(x, np.float32).reshape(-1, r.shape[0], h.shape[0])
    return np.matmul(r.T, xs @ h).reshape(x.shape)


def graph_nodes(node, x: gs.Tensor, k: int, name: str, consts: dict) -> gs.Variable:
    """Append x·Q (float32, last axis k, any rank) to a graph: Reshape(x, [-1, m, p]) → MatMul(·, H_p) →
    MatMul(R_mᵀ, ·) → Reshape(·, Shape(x)). `node(op, inputs, dtype, name, **attrs)` appends one node
    and returns its output (quantize._Builder.node); `consts` caches the shared constants per k."""
    r, h = factors(k)
    m, p = r.shape[0], h.shape[0]
    if k not in consts:
        consts[k] = (gs.Constant(f"rotation_{k}.view", np.array([-1, m, p], np.int64)),
                     gs.Constant(f"rotation_{k}.hadamard", h),
                     gs.Constant(f"rotation_{k}.dct_t", np.ascontiguousarray(r.T)))
    view, hc, rc = consts[k]
    y = node("Reshape", [x, view], np.float32, name)
    if p > 1:
        y = node("MatMul", [y, hc], np.float32, name)
    if m > 1:
        y = node("MatMul", [rc, y], np.float32, name)
    return node("Reshape", [y, node("Shape", [x], np.int64, name)], np.float32, name)
