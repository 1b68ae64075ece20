"""GPTQ rounding for `--int4-method gptq` (Frantar et al., 2023: second-order rounding with error
compensation), for dense linears and PHM nodes alike.

Round-to-nearest rounds every weight on its own. GPTQ rounds the input channels of W (K, N) one at
a time and moves each rounding error onto the channels not rounded yet, weighted by the inverse
Hessian of the layer's output error on calibration rows X (R, K), H = XᵀX:

    for i in 0..K-1:   q_i = clamp(round(W_i / s_i), -7, 7);   e = (W_i − q_i·s_i) / U_ii
                       W_j −= U_ij · e   for j > i               U: upper Cholesky factor of H⁻¹

(blocked as in the paper: 128 rows updated lazily), the input channels taken in order of decreasing
H_ii ("act order"). The scales s are round-to-nearest's (absmax / 7 of each block of `group` input
channels of the *original* weight, per output channel: the static groups of GPTQ's reference code,
which is what lets act order keep each channel's own block scale), so GPTQ changes only which grid
point each weight gets and the export stores exactly the layout RTN stores. The calibration rows
are the float model's (capture.py), not those of a model whose earlier layers are already rounded:
one forward for every layer, as AWQ here.

Damping: H + DAMP·mean(H_ii)·I with DAMP = 1, not the paper's 0.01. The paper calibrates on ~260 k
tokens; the shipped calibration set is 541 tokens of SmolLM2's tokenizer, fewer rows than a linear
has inputs (576 … 1536), so H is singular and lightly damped GPTQ moves errors into directions the
calibration rows never see. Measured on SmolLM2-135M (output error of single linears on 3,535
held-out chatterbot tokens, H from the shipped set): layer 5 q_proj RTN 0.080, AWQ 0.061, GPTQ
0.073 (damp 0.01) → 0.060 (0.1) → 0.057 (1.0); layer 20 gate_proj 0.089 / 0.077 / 0.091 → 0.075 →
0.070; layer 5 down_proj (input act(gate)·up, heavy-tailed) 0.116 / 0.117 / 0.157 → 0.134 → 0.116
(GPTQ gains nothing there at any damping, even with 1,767 rows of the held-out text's own kind).

PHM nodes: the cores multiply the mixed inputs z = M·x (awq.mixed_rows), z (R·n, B·k), against
A_catᵀ (B·k, Σm) (gate and up side by side for a PHMFFN: they read the same x); a PHMFFN's down
cores read h = act(gate)·up, whose rows the down layer's module sees. GPTQ runs on A_catᵀ with
H = zᵀz; its row blocks of `group` are exactly the cores' (m, B, k/group) groups (c fastest in
(b, c)), so the result splits back into each projection's (m, B, k) values and scales.

Results are written to a temporary folder as they are computed (codes as int8, one byte per
weight, and float32 scales) and read back when the export writes the weights: memory holds one
layer's Hessian and weights at a time, whatever the model's size.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .awq import mixed_rows

__all__ = ["ACT_ORDER", "BLOCK", "DAMP", "MAX_ROWS", "GptqResult", "RoundingStore", "gptq_dense", "gptq_phm", "gptq_round",
           "rtn_scales"]

MAX_ROWS = 2048   # calibration rows per input tensor: H (K, K) of full rank for K ≤ 2048
DAMP = 1.0        # H + DAMP·mean(diag H)·I (module doc: why not the paper's 0.01)
BLOCK = 128       # rows rounded between two lazy updates of the rest (the paper's block)
ACT_ORDER = True  # round the most active input channels first


@dataclass
class GptqResult:
    """Codes q (K, N) int8 in [-7, 7], scales (K/group, N) float32, and the relative output errors
    ‖X·W − X·Ŵ‖ / ‖X·W‖ on the calibration rows of round-to-nearest and of GPTQ."""
    q: np.ndarray
    scales: np.ndarray
    rtn_error: float
    error: float


def rtn_scales(w: torch.Tensor, group: int) -> torch.Tensor:
    """(K, N) → (K/group, N): absmax / 7 of each block of `group` input channels (1 for an all-zero
    block), the scale rule of quantize_cores_int4 and quantize_blocks_int4."""
    amax = w.reshape(w.shape[0] // group, group, w.shape[1]).abs().amax(1)
    return torch.where(amax > 0, amax / 7.0, torch.ones_like(amax))


def _inverse_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """U, upper triangular with Uᵀ·U = (H + damping)⁻¹. Input channels that no row activates
    (H_ii = 0) get H_ii = 1: their rounding errors are moved nowhere."""
    h = h.clone()
    diag = torch.diagonal(h)
    diag[diag == 0] = 1.0
    diag += damp * diag.mean()
    chol = torch.linalg.cholesky(h)
    return torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)


def gptq_round(w: np.ndarray, h: np.ndarray, group: int, damp: float | None = None,
               act_order: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ of W (K, N) against the Hessian H (K, K) with the static block scales of `group`
    (module doc): (codes int8 (K, N), scales float32 (K/group, N)). `act_order`: round the input
    channels in order of decreasing H_ii (the most active first, while the most channels are left
    to take their errors); the scales stay those of each channel's own block."""
    damp = DAMP if damp is None else damp
    act_order = ACT_ORDER if act_order is None else act_order
    w = torch.as_tensor(np.asarray(w, np.float32)).clone()
    h = torch.as_tensor(np.asarray(h, np.float32))
    k = w.shape[0]
    scales = rtn_scales(w, group)
    full = scales.repeat_interleave(group, 0)                               # (K, N): the scale of each weight
    perm = torch.argsort(torch.diagonal(h), descending=True) if act_order else torch.arange(k)
    w, full, h = w[perm], full[perm], h[perm][:, perm]
    u = _inverse_factor(h, damp)
    q = torch.empty_like(w, dtype=torch.int8)
    for i1 in range(0, k, BLOCK):
        i2 = min(i1 + BLOCK, k)
        block, errors, u_block = w[i1:i2].clone(), torch.empty_like(w[i1:i2]), u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            s = full[i1 + i]
            code = torch.clamp(torch.round(block[i] / s), -7, 7)
            q[i1 + i] = code.to(torch.int8)
            err = (block[i] - code * s) / u_block[i, i]
            block[i:] -= torch.outer(u_block[i, i:], err)
            errors[i] = err
        w[i2:] -= u[i1:i2, i2:].T @ errors
    out = torch.empty_like(q)
    out[perm] = q
    return out.numpy(), scales.numpy()


def _relative_error(x: np.ndarray, w: np.ndarray, w_hat: np.ndarray) -> float:
    ref = x @ w
    return float(np.linalg.norm(x @ w_hat - ref) / (np.linalg.norm(ref) or 1.0))


def _solve(x: np.ndarray, w: np.ndarray, group: int) -> GptqResult:
    """GPTQ of W (K, N) on the rows x (R, K), with both errors measured on them."""
    x = np.asarray(x, np.float32)
    xt = torch.from_numpy(x)
    q, scales = gptq_round(w, (xt.T @ xt).numpy(), group)
    full = np.repeat(scales, group, axis=0)
    rtn = np.clip(np.round(w / full), -7, 7) * full
    return GptqResult(q, scales, _relative_error(x, w, rtn), _relative_error(x, w, q * full))


def gptq_dense(x: np.ndarray, w: np.ndarray, group: int) -> GptqResult:
    """GPTQ of the dense weights w (K, ΣN) that read one input tensor, from its rows x (R, K)
    (q/k/v side by side: GPTQ rounds output columns independently, so together is the same as apart)."""
    return _solve(np.asarray(x[:MAX_ROWS], np.float32), np.asarray(w, np.float32), group)


def gptq_phm(x: np.ndarray, cores: list[np.ndarray], bases, group: int) -> tuple[list, GptqResult]:
    """GPTQ of the cores (m_i, B, k) that read one PHM input, from its rows x (R, n·k): per core
    (codes int8 (m_i, B, k), scales float32 (m_i, B, k/group)), and the whole result (A_catᵀ's)."""
    num_bases, k = cores[0].shape[1], cores[0].shape[2]
    z = mixed_rows(np.asarray(x[:MAX_ROWS], np.float32), bases, num_bases)          # (R·n, B·k)
    a_cat_t = np.concatenate([c.reshape(c.shape[0], -1).T for c in cores], axis=1)  # (B·k, Σm)
    res = _solve(z, a_cat_t, group)
    out, start = [], 0
    for c in cores:
        m = c.shape[0]
        q = res.q[:, start:start + m].reshape(num_bases, k, m).transpose(2, 0, 1)
        s = res.scales[:, start:start + m].reshape(num_bases, k // group, m).transpose(2, 0, 1)
        out.append((np.ascontiguousarray(q), np.ascontiguousarray(s)))
        start += m
    return out, res


class RoundingStore:
    """GPTQ's codes and scales by key, in a temporary folder until the export has written them
    (removed with the store): `put(key, q, scales)`, `get(key) -> (q, scales)` (memory-mapped)."""

    def __init__(self):
        self._dir = tempfile.TemporaryDirectory(prefix="phm-gptq-")
        self._paths: dict = {}

    def put(self, key, q: np.ndarray, scales: np.ndarray) -> None:
        stem = Path(self._dir.name) / f"{len(self._paths)}"
        np.save(f"{stem}.q.npy", np.ascontiguousarray(q, np.int8))
        np.save(f"{stem}.s.npy", np.ascontiguousarray(scales, np.float32))
        self._paths[key] = stem

    def get(self, key) -> tuple[np.ndarray, np.ndarray]:
        stem = self._paths[key]
        return np.load(f"{stem}.q.npy", mmap_mode="r"), np.load(f"{stem}.s.npy", mmap_mode="r")

    def __contains__(self, key) -> bool:
        return key in self._paths

    def __len__(self) -> int:
        return len(self._paths)
