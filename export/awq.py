"""AWQ channel scales for `--int4-method awq` (Lin et al., activation-aware weight quantization), for
dense linears and PHM nodes alike.

A linear y = x·W computes the same as (x / s)·(diag(s)·W) for any per-input-channel s > 0, but INT4
rounds diag(s)·W instead of W: channels with large activations, scaled up, lose less to rounding,
and those are the channels whose errors reach the output most. For the linears reading one tensor
(rows X (R, K) from the calibration prompts, weights W_i (K, N_i) side by side):

    s(α) = mean_r |X[r, :]|^α, normalised so that max(s)·min(s) = 1,   α ∈ ALPHAS
    error(α) = ‖X·W − (X / s)·Q(diag(s)·W)‖ / ‖X·W‖        Q: the INT4 block rounding of quantize_int4

and the α with the least error is kept. α = 0 is s = 1, plain round-to-nearest, so on the
calibration rows AWQ never measures worse than RTN. The graph divides x by s (one Mul per tensor,
shared by q/k/v) and the weights are diag(s)·W before rounding.

PHM nodes: the cores multiply the mixed inputs z = M·x (lower.py: x as n blocks of k, M the (n·B, n)
mixing matrix, z (…, n, B·k)), so the error is measured on z against A_catᵀ (B·k, m) (gate and up
side by side for a PHMFFN). A scale that x can carry has to be one per column c ∈ [0, k), shared by
x's n blocks — then z's column b·k + c is divided by s_c for every basis b, and each core A_b's
column c is multiplied by s_c: the node computes exactly what it did before rounding. Its
statistic is mean |z[:, b·k + c]| over rows and bases. A swiglu PHMFFN's down projection reads
h = act(gate)·up inside the node: its scale (one per column of f/n, from the rows the down layer's
module reads) is carried by up's core rows (divided: up's output column (i, c) is row c of every
A_b) and down's core columns (multiplied), exactly as well (quantize_int4.down_scalable: not with
biases, not for a plain MLP, whose activation would not commute).
"""

from __future__ import annotations

import numpy as np
import torch

from phm.trainer.hypercomplex import mixing_matrix

from .quantize_int4 import block_group, dequantize_blocks, quantize_blocks_int4

__all__ = ["ALPHAS", "MAX_ROWS", "AwqScale", "dense_scale", "mixed_rows", "phm_scale"]

ALPHAS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))  # the search grid (the paper's is 20 points)
MAX_ROWS = 512          # calibration rows an error is measured on (the search costs |ALPHAS| GEMMs of them)


class AwqScale:
    """The chosen scale of one input tensor: s (K,) for dense readers, (k,) for a PHM node's cores;
    alpha and the relative output errors of round-to-nearest and of the chosen s."""

    def __init__(self, s: np.ndarray, alpha: float, rtn_error: float, error: float):
        self.s, self.alpha, self.rtn_error, self.error = s.astype(np.float32), float(alpha), rtn_error, error


def _rounded(w: np.ndarray, group: int) -> np.ndarray:
    """W (K, N) through the INT4 block rounding along K (what the export stores), float32."""
    g = block_group(w.shape[0], group)
    if g is None:
        return w
    packed, scales = quantize_blocks_int4(w, 0, g)
    return dequantize_blocks(packed, scales, w.shape, 0, g)


def _search(x: np.ndarray, w: np.ndarray, stat: np.ndarray, expand, group: int) -> AwqScale:
    """The α of ALPHAS whose s = stat^α (normalised; `expand` maps it onto x's columns) rounds W with
    the least output error on rows x."""
    ref = x @ w
    norm = float(np.linalg.norm(ref)) or 1.0
    best = None
    for alpha in ALPHAS:
        s = np.maximum(stat, 1e-8) ** alpha
        s = s / np.sqrt(s.max() * s.min())
        full = expand(s)
        err = float(np.linalg.norm((x / full) @ _rounded(w * full[:, None], group) - ref)) / norm
        if best is None or err < best.error:
            best = AwqScale(s, alpha, best.rtn_error if best else err, err)
    return best


def dense_scale(x: np.ndarray, w: np.ndarray, group: int) -> AwqScale:
    """AWQ scale of one input tensor: rows x (R, K) read by weights w (K, ΣN)."""
    x = np.asarray(x[:MAX_ROWS], np.float32)
    return _search(x, np.asarray(w, np.float32), np.abs(x).mean(0), lambda s: s, group)


def mixed_rows(x: np.ndarray, bases, num_bases: int) -> np.ndarray:
    """The rows z that a PHM node's cores multiply, (R·n, B·k), from its input rows x (R, n·k)."""
    bases = torch.as_tensor(np.asarray(bases, np.float32)).reshape(-1)             # (B, n, n) or a node's field
    n = int(round((bases.numel() / num_bases) ** 0.5))
    mix = mixing_matrix(bases.reshape(num_bases, n, n)).numpy()                   # (n·B, n)
    r, d = x.shape
    z = np.einsum("ij,rjc->ric", mix, x.reshape(r, n, d // n))                    # (R, n·B, k)
    return z.reshape(r * n, num_bases * (d // n))


def phm_scale(x: np.ndarray, cores: list[np.ndarray], bases, group: int) -> AwqScale:
    """AWQ scale (k,) of a PHM node's input: rows x (R, n·k), the cores (m, B, k) that read it,
    rounded in groups of `group` along k (the node's group_size). A_catᵀ's rows are (b, c) with c
    fastest, so blocks of `group` along them are exactly the cores' groups."""
    num_bases, k = cores[0].shape[1], cores[0].shape[2]
    z = mixed_rows(np.asarray(x[:MAX_ROWS], np.float32), bases, num_bases)
    a_cat_t = np.concatenate([c.reshape(c.shape[0], -1).T for c in cores], axis=1)  # (B·k, Σm)
    stat = np.abs(z).reshape(len(z), num_bases, k).mean((0, 1))
    return _search(z, a_cat_t, stat, lambda s: np.tile(s, num_bases), group)
