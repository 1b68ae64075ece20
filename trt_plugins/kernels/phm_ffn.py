"""PHMFFN's fused first half in Triton: h = act(gate(x) + b_g) · (up(x) + b_u), never writing gate/up.

Shapes as in phm_linear.py with f = d_ff/n rows per core: gate/up cores (f, B, k) (or packed int4
(f, B, k/2)), h (T, n·f). The whole PHMFFN is this kernel followed by `phm_linear_kernel` for the
down projection (the intermediate h, T × d_ff, is the only extra traffic: at decode it is
d_ff·2 bytes against ≥ d_ff·d_model·B/n² bytes of cores). A plain MLP (fc1 → act → fc2) is
`phm_linear_kernel` with its activation followed by `phm_linear_kernel`.

Each program computes the gate tile and the up tile for the same rows (so both cores stream once
and the activation is applied in registers) with the same specialisations as PHMLinear.
"""

from __future__ import annotations

import triton
import triton.language as tl

from phm.trt_plugins.kernels.phm_linear import _activation, _bias, _store, phm_tile


@triton.jit
def phm_gate_up_kernel(x_ptr, gate_ptr, up_ptr, gate_scales_ptr, up_scales_ptr,
                       gate_bias_ptr, up_bias_ptr, bases_ptr, h_ptr,
                       T, M, K, NUM_BASES, GROUP, stride_xt, stride_ht, HAS_BIAS, ACT,
                       N: tl.constexpr, WFMT: tl.constexpr, MIX_W: tl.constexpr,
                       USE_DOT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    """Grid: (cdiv(T, BLOCK_T) · cdiv(M, BLOCK_M),), M = f = d_ff/n; token tiles fastest."""
    pid = tl.program_id(0)
    n_t = tl.cdiv(T, BLOCK_T)
    pid_t = pid % n_t
    pid_m = pid // n_t
    g = phm_tile(x_ptr, gate_ptr, gate_scales_ptr, bases_ptr, stride_xt, T, M, K, NUM_BASES,
                 GROUP, pid_t, pid_m, N, WFMT, MIX_W, USE_DOT, BLOCK_T, BLOCK_M, BLOCK_K)
    u = phm_tile(x_ptr, up_ptr, up_scales_ptr, bases_ptr, stride_xt, T, M, K, NUM_BASES,
                 GROUP, pid_t, pid_m, N, WFMT, MIX_W, USE_DOT, BLOCK_T, BLOCK_M, BLOCK_K)
    if HAS_BIAS != 0:
        g = _bias(gate_bias_ptr, g, M, pid_m, N, BLOCK_M)
        u = _bias(up_bias_ptr, u, M, pid_m, N, BLOCK_M)
    h = _activation(g, ACT) * u
    _store(h_ptr, stride_ht, h, T, M, pid_t, pid_m, N, BLOCK_T, BLOCK_M)
