"""Launch the Triton PHM kernels on torch tensors (CUDA tensors: JIT; CPU tensors: interpreter).

The interpreter is selected by the environment variable TRITON_INTERPRET=1, which must be set before
triton is first imported (tests/trt_plugins/conftest.py does it). The config per T comes from
`configs.select`, the same rule the AOT C dispatcher applies.
"""

from __future__ import annotations

import torch
import triton

from phm.trt_plugins import spec
from phm.trt_plugins.kernels import configs
from phm.trt_plugins.kernels.phm_ffn import phm_gate_up_kernel
from phm.trt_plugins.kernels.phm_linear import WFMT_FLOAT, WFMT_INT4, WFMT_INT8, phm_linear_kernel

ACT_CODES = {name: i for i, name in enumerate(spec.ACTIVATIONS)}
WFMT_CODES = {"float": WFMT_FLOAT, "int8": WFMT_INT8, "int4": WFMT_INT4}


def interpreted() -> bool:
    """True when the kernels were created under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    return not isinstance(phm_linear_kernel, triton.runtime.jit.JITFunction)


def _fix_interpreter_bf16_dot() -> None:
    """Triton 3.9's interpreter stores bfloat16 as uint16 and its tl.dot multiplies those raw
    integers. Widen bf16 operands to fp32 first (bf16 products are exact in fp32, as on tensor
    cores); no effect on compiled kernels."""
    from triton.runtime import interpreter as interp
    import numpy as np
    import triton.language as tl

    builder = interp.InterpreterBuilder
    if getattr(builder.create_dot, "_phm_bf16_fixed", False):
        return
    original = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        def widen(h):
            if h.dtype.scalar == tl.bfloat16:
                data = (h.data.astype(np.uint32) << 16).view(np.float32)
                return interp.TensorHandle(data, tl.float32)
            return h
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    create_dot._phm_bf16_fixed = True
    builder.create_dot = create_dot


def _check_backend(x: torch.Tensor) -> None:
    if x.device.type != "cuda" and not interpreted():
        raise RuntimeError("the Triton PHM kernels need CUDA tensors, or TRITON_INTERPRET=1 set before "
                           "triton is first imported to run them on the CPU")
    if interpreted() and x.dtype == torch.bfloat16:
        _fix_interpreter_bf16_dot()


def _placeholder(device, dtype) -> torch.Tensor:
    return torch.zeros(1, device=device, dtype=dtype)


def _check_proj(name: str, x_dtype, cores, scales, weight_format: str, group_size: int, k: int,
                num_bases: int) -> None:
    """Validate one projection's cores/scales against spec.py's layouts (ValueError naming it)."""
    if weight_format not in WFMT_CODES:
        raise ValueError(f"{name}: weight_format {weight_format!r} not in {spec.WEIGHT_FORMATS}")
    m = cores.shape[0]
    if cores.dim() != 3 or cores.shape[1] != num_bases:
        raise ValueError(f"{name}: cores must be (m, B={num_bases}, ·), got {tuple(cores.shape)}")
    if weight_format == "float":
        if cores.dtype != x_dtype or cores.shape[2] != k:
            raise ValueError(f"{name}: float cores must be {x_dtype} (m, B, {k}), got "
                             f"{cores.dtype} {tuple(cores.shape)}")
        return
    if cores.dtype != torch.int8:
        raise ValueError(f"{name}: {weight_format} cores must be int8, got {cores.dtype}")
    if scales is None or scales.dtype != torch.float32:
        raise ValueError(f"{name}: {weight_format} cores need float32 scales")
    if weight_format == "int8":
        if cores.shape[2] != k or tuple(scales.shape) != (m,):
            raise ValueError(f"{name}: int8 wants cores (m, B, {k}) and scales ({m},), got "
                             f"{tuple(cores.shape)}, {tuple(scales.shape)}")
    else:
        if group_size <= 0 or group_size % 2 or k % group_size:
            raise ValueError(f"{name}: int4 group_size {group_size} must be even and divide k={k}")
        if cores.shape[2] * 2 != k or tuple(scales.shape) != (m, num_bases, k // group_size):
            raise ValueError(f"{name}: int4 wants packed cores (m, B, {k // 2}) and scales "
                             f"(m, B, {k // group_size}), got {tuple(cores.shape)}, {tuple(scales.shape)}")


def _prep(x: torch.Tensor, bases: torch.Tensor):
    num_bases, n, _ = bases.shape
    if x.shape[-1] % n:
        raise ValueError(f"input has {x.shape[-1]} features, not divisible by n={n}")
    if n not in spec.SUPPORTED_N:
        raise ValueError(f"n={n} not supported by the kernels (supported: {spec.SUPPORTED_N})")
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return x2, bases.to(device=x.device, dtype=torch.float32).contiguous(), n, num_bases


def phm_linear(x: torch.Tensor, cores: torch.Tensor, bases: torch.Tensor,
               bias: torch.Tensor | None = None, scales: torch.Tensor | None = None,
               weight_format: str = "float", group_size: int = 0,
               activation: str = "none", config: configs.TileConfig | None = None) -> torch.Tensor:
    """y = act(Σ_b (H_b ⊗ A_b) x + bias), (..., n·k) → (..., n·m), in x's dtype.

    `config` overrides `configs.select` (tests run every specialisation on every shape)."""
    x2, bases32, n, num_bases = _prep(x, bases)
    k = x2.shape[1] // n
    _check_proj("PHMLinear", x.dtype, cores, scales, weight_format, group_size, k, num_bases)
    if activation not in ACT_CODES:
        raise ValueError(f"activation {activation!r} not in {spec.ACTIVATIONS}")
    m, t = cores.shape[0], x2.shape[0]
    y = torch.empty(t, n * m, device=x.device, dtype=x.dtype)
    if t == 0:
        return y.reshape(*x.shape[:-1], n * m)
    cfg = config or configs.select(t, n, num_bases)
    _check_backend(x)
    grid = (triton.cdiv(t, cfg.block_t) * triton.cdiv(m, cfg.block_m),)
    phm_linear_kernel[grid](
        x2, cores.contiguous(),
        scales.contiguous() if scales is not None else _placeholder(x.device, torch.float32),
        bias.contiguous() if bias is not None else _placeholder(x.device, x.dtype),
        bases32, y, t, m, k, num_bases, max(group_size, 1), x2.stride(0), y.stride(0),
        int(bias is not None), ACT_CODES[activation],
        N=n, WFMT=WFMT_CODES[weight_format], MIX_W=cfg.mix_w, USE_DOT=cfg.use_dot,
        BLOCK_T=cfg.block_t, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return y.reshape(*x.shape[:-1], n * m)


def phm_gate_up(x: torch.Tensor, gate_cores, up_cores, bases, gate_bias=None, up_bias=None,
                gate_scales=None, up_scales=None, weight_format: str = "float",
                group_size: int = 0, activation: str = "silu",
                config: configs.TileConfig | None = None) -> torch.Tensor:
    """h = act(gate(x)) · up(x), (..., n·k) → (..., n·f): the fused first half of a SwiGLU MLP."""
    x2, bases32, n, num_bases = _prep(x, bases)
    k = x2.shape[1] // n
    for name, c, s in (("gate", gate_cores, gate_scales), ("up", up_cores, up_scales)):
        _check_proj(f"PHMFFN {name}", x.dtype, c, s, weight_format, group_size, k, num_bases)
    if gate_cores.shape != up_cores.shape:
        raise ValueError(f"gate cores {tuple(gate_cores.shape)} != up cores {tuple(up_cores.shape)}")
    if activation not in ACT_CODES or activation == "none":
        raise ValueError(f"PHMFFN activation {activation!r} not in {spec.ACTIVATIONS[1:]}")
    if (gate_bias is None) != (up_bias is None):
        raise ValueError("PHMFFN: give both gate and up biases or neither (zeros for a missing one)")
    f, t = gate_cores.shape[0], x2.shape[0]
    h = torch.empty(t, n * f, device=x.device, dtype=x.dtype)
    if t == 0:
        return h.reshape(*x.shape[:-1], n * f)
    cfg = config or configs.select(t, n, num_bases)
    _check_backend(x)
    grid = (triton.cdiv(t, cfg.block_t) * triton.cdiv(f, cfg.block_m),)
    ph_s, ph_b = _placeholder(x.device, torch.float32), _placeholder(x.device, x.dtype)
    phm_gate_up_kernel[grid](
        x2, gate_cores.contiguous(), up_cores.contiguous(),
        gate_scales.contiguous() if gate_scales is not None else ph_s,
        up_scales.contiguous() if up_scales is not None else ph_s,
        gate_bias.contiguous() if gate_bias is not None else ph_b,
        up_bias.contiguous() if up_bias is not None else ph_b,
        bases32, h, t, f, k, num_bases, max(group_size, 1), x2.stride(0), h.stride(0),
        int(gate_bias is not None), ACT_CODES[activation],
        N=n, WFMT=WFMT_CODES[weight_format], MIX_W=cfg.mix_w, USE_DOT=cfg.use_dot,
        BLOCK_T=cfg.block_t, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return h.reshape(*x.shape[:-1], n * f)


def phm_ffn(x: torch.Tensor, bases: torch.Tensor, up_cores, down_cores, gate_cores=None,
            gate_bias=None, up_bias=None, down_bias=None, gate_scales=None, up_scales=None,
            down_scales=None, weight_format: str = "float", group_size: int = 0,
            activation: str = "silu", mlp_type: str = "swiglu",
            config: configs.TileConfig | None = None) -> torch.Tensor:
    """PHMFFN: swiglu y = down(act(gate(x))·up(x)); plain y = down(act(up(x))). Two launches:
    the fused gate/up/activation kernel (or PHMLinear with its activation), then PHMLinear."""
    if mlp_type not in spec.MLP_TYPES:
        raise ValueError(f"mlp_type {mlp_type!r} not in {spec.MLP_TYPES}")
    if mlp_type == "swiglu":
        if gate_cores is None:
            raise ValueError("swiglu PHMFFN needs gate cores")
        h = phm_gate_up(x, gate_cores, up_cores, bases, gate_bias, up_bias, gate_scales,
                        up_scales, weight_format, group_size, activation, config)
    else:
        if activation == "none":
            raise ValueError("PHMFFN activation 'none' is not an MLP; use PHMLinear")
        h = phm_linear(x, up_cores, bases, up_bias, up_scales, weight_format, group_size, activation,
                       config)
    return phm_linear(h, down_cores, bases, down_bias, down_scales, weight_format, group_size,
                      config=config)
