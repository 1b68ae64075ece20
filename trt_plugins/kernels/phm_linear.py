"""PHMLinear in Triton: y = act(Σ_b (H_b ⊗ A_b) x + bias), never materialising W (docs/design.md §1, §4).

One source, three uses: Triton's interpreter (TRITON_INTERPRET=1, CPU tests), JIT from torch on a
GPU (`phm.trt_plugins.torch_ops`) and AOT cubins + C launchers for the TensorRT plugins (`aot.py`).

Shapes (m = d_out/n, k = d_in/n, B = num_bases, T = tokens):
    x      (T, n·k)   row stride `stride_xt`, columns contiguous; fp32 / fp16 / bf16
    cores  (m, B, k)  float (x's dtype) or int8;  (m, B, k/2) int8 = packed int4 (spec.py)
    scales int8: (m,) fp32;  int4: (m, B, k/group) fp32;  unused for float cores
    bias   (n·m,)     x's dtype, read when HAS_BIAS != 0
    bases  (B, n, n)  fp32, row-major: the H_b
    y      (T, n·m)   row stride `stride_yt`, x's dtype

Every program owns BLOCK_M rows of A_cat (i.e. the n output blocks y_i for those rows) and
BLOCK_T tokens; its accumulator holds the n·BLOCK_T rows of the DESIGN's (n·T) × (B·k) × m GEMM,
so each core tile is loaded once and used for all n outputs and all BLOCK_T tokens. Three
specialisations (all tl.constexpr, chosen per T by `configs.py`):
- gemv    (T = 1): weight streaming, elementwise FMAs into a (n, BLOCK_M, BLOCK_K) register
          accumulator reduced once at the end; input mixing z_{i,b} = Σ_j H_b[i,j] x_j fused.
- decode  (T ≤ 16): the same streaming order with tl.dot on (n·16) × BLOCK_K × BLOCK_M tiles.
- prefill (T > 16): tl.dot tiles; for B ≤ n the inputs are mixed (n·B dots per k-step, B/n of the
          dense MACs), for B > n (MIX_W) the W blocks Σ_b H_b[i,j]·A_b are built on the fly from the
          A tiles and one (T × n·k) · (n·k × n·m) dot is issued (dense MACs, B/n² of the bytes).
Quantized cores: INT8 is dequantised by the row scale in the epilogue (exact in the dot); INT4
nibbles are unpacked into their even (low) and odd (high) element halves, each scaled by its group
scale and multiplied with the matching even / odd input columns, so no interleave is needed.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Weight formats (WFMT) and activations (ACT): integer codes shared with configs.py / the C ABI.
WFMT_FLOAT, WFMT_INT8, WFMT_INT4 = 0, 1, 2
ACT_NONE, ACT_SILU, ACT_GELU, ACT_GELU_TANH, ACT_RELU = 0, 1, 2, 3, 4


@triton.jit
def _activation(v, ACT):
    """v fp32; ACT is a runtime int32 (one uniform branch, no recompilation per activation)."""
    if ACT == 1:
        v = v * tl.sigmoid(v)
    elif ACT == 2:
        v = 0.5 * v * (1.0 + tl.math.erf(v * 0.7071067811865476))
    elif ACT == 3:
        u = 0.7978845608028654 * (v + 0.044715 * v * v * v)
        v = 0.5 * v * (1.0 + (2.0 * tl.sigmoid(2.0 * u) - 1.0))   # tanh(u) = 2σ(2u) − 1
    elif ACT == 4:
        v = tl.maximum(v, 0.0)
    return v


@triton.jit
def _load_x(x_ptr, stride_xt, t_offs, t_mask, K, kx, kx_mask, N: tl.constexpr):
    """x[t, j·K + kx] for j < N → (BLOCK_T, N, len(kx)) fp32."""
    j = tl.arange(0, N)
    ptrs = (x_ptr + t_offs.to(tl.int64)[:, None, None] * stride_xt
            + j[None, :, None] * K + kx[None, None, :])
    mask = t_mask[:, None, None] & kx_mask[None, None, :]
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_core(cores_ptr, scales_ptr, m_offs, m_mask, b, kc, kc_mask, K, NUM_BASES, GROUP,
               WFMT: tl.constexpr, PART: tl.constexpr):
    """Core tile A_b[m, ·] → (BLOCK_M, len(kc)) fp32.

    float / int8: kc are element columns (int8 left unscaled: the row scale is applied later).
    int4: kc are byte columns of the packed (m, B, k/2) tensor; PART 0 returns the low nibbles
    (elements 2c), PART 1 the high nibbles (elements 2c+1), scaled by their group scale.
    """
    mask = m_mask[:, None] & kc_mask[None, :]
    rows = m_offs.to(tl.int64)[:, None]
    if WFMT == 2:
        kb = K // 2
        p = tl.load(cores_ptr + rows * (NUM_BASES * kb) + b * kb + kc[None, :], mask=mask, other=0)
        p = p.to(tl.int32)
        if PART == 0:
            q = ((p & 0xF) ^ 8) - 8
        else:
            q = (((p >> 4) & 0xF) ^ 8) - 8
        elem = 2 * kc + PART
        ng = K // GROUP
        s = tl.load(scales_ptr + rows * (NUM_BASES * ng) + b * ng + (elem // GROUP)[None, :],
                    mask=mask, other=0.0)
        return q.to(tl.float32) * s
    else:
        a = tl.load(cores_ptr + rows * (NUM_BASES * K) + b * K + kc[None, :], mask=mask, other=0)
        return a.to(tl.float32)


@triton.jit
def phm_tile(x_ptr, cores_ptr, scales_ptr, bases_ptr, stride_xt, T, M, K, NUM_BASES, GROUP,
             pid_t, pid_m,
             N: tl.constexpr, WFMT: tl.constexpr, MIX_W: tl.constexpr, USE_DOT: tl.constexpr,
             BLOCK_T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Σ_b (H_b ⊗ A_b) x for one (BLOCK_T tokens) × (BLOCK_M rows of every y_i) tile.

    Returns (BLOCK_T, N, BLOCK_M) fp32: [t, i, r] = y[t, i·M + pid_m·BLOCK_M + r], bias-free,
    INT8 row scales applied.
    """
    DT: tl.constexpr = x_ptr.dtype.element_ty
    if WFMT == 2:
        BKP: tl.constexpr = BLOCK_K // 2   # bytes per k-step; each holds two elements
        NPARTS: tl.constexpr = 2
        STEP: tl.constexpr = 2
    else:
        BKP: tl.constexpr = BLOCK_K
        NPARTS: tl.constexpr = 1
        STEP: tl.constexpr = 1
    t_offs = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = t_offs < T
    m_offs = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = m_offs < M
    kk = tl.arange(0, BKP)
    ii = tl.arange(0, N)

    if USE_DOT:
        if MIX_W:
            acc = tl.zeros((BLOCK_T, N * BLOCK_M), dtype=tl.float32)   # columns (i, r)
        else:
            acc = tl.zeros((BLOCK_T * N, BLOCK_M), dtype=tl.float32)   # rows (t, i)
    else:
        acc = tl.zeros((BLOCK_T * N, BLOCK_M, BKP), dtype=tl.float32)  # reduced over k at the end

    for k0 in range(0, K, BLOCK_K):
        for part in tl.static_range(NPARTS):
            kx = k0 + STEP * kk + part                  # input columns within each block x_j
            kx_mask = kx < K
            kc = k0 // STEP + kk                        # core columns (bytes for int4)
            kc_mask = kc < K // STEP
            x3 = _load_x(x_ptr, stride_xt, t_offs, t_mask, K, kx, kx_mask, N)  # (BT, N_j, BKP)
            if MIX_W:
                w = tl.zeros((N, BLOCK_M, N, BKP), dtype=tl.float32)        # W block (i, r, j, c)
            for b in range(NUM_BASES):
                h = tl.load(bases_ptr + b * N * N + ii[:, None] * N + ii[None, :])  # (N_i, N_j)
                a = _load_core(cores_ptr, scales_ptr, m_offs, m_mask, b, kc, kc_mask, K,
                               NUM_BASES, GROUP, WFMT, part)                     # (BM, BKP)
                if MIX_W:
                    w += h[:, None, :, None] * a[None, :, None, :]
                else:
                    # z_{i,b} = Σ_j H_b[i, j] x_j, fused in registers
                    z = tl.sum(h[None, :, :, None] * x3[:, None, :, :], axis=2)  # (BT, N_i, BKP)
                    z2 = tl.reshape(z, (BLOCK_T * N, BKP))
                    if USE_DOT:
                        if DT == tl.float32:
                            acc += tl.dot(z2, tl.trans(a), input_precision="ieee")
                        else:
                            acc += tl.dot(z2.to(DT), tl.trans(a.to(DT)))
                    else:
                        acc += z2[:, None, :] * a[None, :, :]
            if MIX_W:
                x2 = tl.reshape(x3, (BLOCK_T, N * BKP))
                w2 = tl.reshape(w, (N * BLOCK_M, N * BKP))
                if DT == tl.float32:
                    acc += tl.dot(x2, tl.trans(w2), input_precision="ieee")
                else:
                    acc += tl.dot(x2.to(DT), tl.trans(w2.to(DT)))

    if USE_DOT:
        if MIX_W:
            out = tl.reshape(acc, (BLOCK_T, N, BLOCK_M))
        else:
            out = tl.reshape(acc, (BLOCK_T, N, BLOCK_M))
    else:
        out = tl.reshape(tl.sum(acc, axis=2), (BLOCK_T, N, BLOCK_M))
    if WFMT == 1:
        s = tl.load(scales_ptr + m_offs, mask=m_mask, other=0.0)
        out = out * s[None, None, :]
    return out


@triton.jit
def _store(y_ptr, stride_yt, out, T, M, pid_t, pid_m, N: tl.constexpr,
           BLOCK_T: tl.constexpr, BLOCK_M: tl.constexpr):
    t_offs = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    m_offs = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ii = tl.arange(0, N)
    ptrs = (y_ptr + t_offs.to(tl.int64)[:, None, None] * stride_yt
            + ii[None, :, None] * M + m_offs[None, None, :])
    mask = (t_offs < T)[:, None, None] & (m_offs < M)[None, None, :]
    tl.store(ptrs, out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias(bias_ptr, out, M, pid_m, N: tl.constexpr, BLOCK_M: tl.constexpr):
    m_offs = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ii = tl.arange(0, N)
    bias = tl.load(bias_ptr + ii[:, None] * M + m_offs[None, :], mask=(m_offs < M)[None, :], other=0.0)
    return out + bias.to(tl.float32)[None, :, :]


@triton.jit
def phm_linear_kernel(x_ptr, cores_ptr, scales_ptr, bias_ptr, bases_ptr, y_ptr,
                      T, M, K, NUM_BASES, GROUP, stride_xt, stride_yt, HAS_BIAS, ACT,
                      N: tl.constexpr, WFMT: tl.constexpr, MIX_W: tl.constexpr,
                      USE_DOT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    """Grid: (cdiv(T, BLOCK_T) · cdiv(M, BLOCK_M),), token tiles fastest so that consecutive
    programs share one core tile (each core byte leaves DRAM once, x stays in L2)."""
    pid = tl.program_id(0)
    n_t = tl.cdiv(T, BLOCK_T)
    pid_t = pid % n_t
    pid_m = pid // n_t
    out = phm_tile(x_ptr, cores_ptr, scales_ptr, bases_ptr, stride_xt, T, M, K, NUM_BASES, GROUP,
                   pid_t, pid_m, N, WFMT, MIX_W, USE_DOT, BLOCK_T, BLOCK_M, BLOCK_K)
    if HAS_BIAS != 0:
        out = _bias(bias_ptr, out, M, pid_m, N, BLOCK_M)
    out = _activation(out, ACT)
    _store(y_ptr, stride_yt, out, T, M, pid_t, pid_m, N, BLOCK_T, BLOCK_M)
