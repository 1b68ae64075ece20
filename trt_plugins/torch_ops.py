"""torch custom ops `phm::phm_linear` and `phm::phm_ffn` over the Triton kernels.

On CUDA tensors they launch the same Triton kernels the TensorRT plugins embed (JIT); elsewhere they
compute the same math with `phm.trainer.hypercomplex.phm_forward` (real results, never zeros).
`register_fake` gives shapes for torch.export / torch.compile; float cores get gradients through
the reference math (the backward is not a fused kernel).

    y = torch.ops.phm.phm_linear(x, cores, bases, bias, scales, "float", 0, "none")
    y = torch.ops.phm.phm_ffn(x, bases, gate, up, down, gate_b, up_b, down_b, None, None, None,
                              "float", 0, "silu", "swiglu")

Argument layouts are spec.py's (cores (m, B, k) | int8 | packed int4, fp32 scales).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from phm.trainer.hypercomplex import phm_forward
from phm.trt_plugins import quant, spec

__all__ = ["phm_ffn", "phm_linear", "reference_ffn", "reference_linear"]

_ACT = {"none": lambda v: v, "silu": F.silu, "gelu": F.gelu,
        "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"), "relu": F.relu}


def _dequant(cores: Tensor, scales: Tensor | None, weight_format: str, group_size: int,
             dtype: torch.dtype) -> Tensor:
    if weight_format == "float":
        return cores
    if weight_format == "int8":
        return quant.dequantize_cores_int8(cores, scales).to(dtype)
    if weight_format == "int4":
        return quant.dequantize_cores_int4(cores, scales, group_size).to(dtype)
    raise ValueError(f"weight_format {weight_format!r} not in {spec.WEIGHT_FORMATS}")


def reference_linear(x, cores, bases, bias=None, scales=None, weight_format="float", group_size=0,
                     activation="none") -> Tensor:
    """The op's math in plain torch (CPU path, backward, tests)."""
    if activation not in _ACT:
        raise ValueError(f"activation {activation!r} not in {spec.ACTIVATIONS}")
    w = _dequant(cores, scales, weight_format, group_size, x.dtype)
    return _ACT[activation](phm_forward(x, w, bases.to(x.dtype), bias))


def reference_ffn(x, bases, gate_cores, up_cores, down_cores, gate_bias=None, up_bias=None,
                  down_bias=None, gate_scales=None, up_scales=None, down_scales=None,
                  weight_format="float", group_size=0, activation="silu", mlp_type="swiglu") -> Tensor:
    args = (weight_format, group_size)
    if mlp_type == "swiglu":
        h = (reference_linear(x, gate_cores, bases, gate_bias, gate_scales, *args, activation)
             * reference_linear(x, up_cores, bases, up_bias, up_scales, *args))
    elif mlp_type == "plain":
        h = reference_linear(x, up_cores, bases, up_bias, up_scales, *args, activation)
    else:
        raise ValueError(f"mlp_type {mlp_type!r} not in {spec.MLP_TYPES}")
    return reference_linear(h, down_cores, bases, down_bias, down_scales, *args)


def _use_kernels(x: Tensor) -> bool:
    if not x.is_cuda:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@torch.library.custom_op("phm::phm_linear", mutates_args=())
def phm_linear(x: Tensor, cores: Tensor, bases: Tensor, bias: Tensor | None = None,
               scales: Tensor | None = None, weight_format: str = "float", group_size: int = 0,
               activation: str = "none") -> Tensor:
    """y = act(Σ_b (H_b ⊗ A_b) x + bias): (..., n·k) → (..., n·m) in x's dtype."""
    if _use_kernels(x):
        from phm.trt_plugins.kernels.launch import phm_linear as launch
        return launch(x, cores, bases, bias, scales, weight_format, group_size, activation)
    return reference_linear(x, cores, bases, bias, scales, weight_format, group_size, activation).clone()


@phm_linear.register_fake
def _(x, cores, bases, bias=None, scales=None, weight_format="float", group_size=0, activation="none"):
    return x.new_empty(*x.shape[:-1], bases.shape[-1] * cores.shape[0])


def _linear_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:5])
    ctx.options = inputs[5:]


def _linear_backward(ctx, grad):
    x, cores, bases, bias, scales = ctx.saved_tensors
    weight_format, group_size, activation = ctx.options
    diff = [t for t in (x, cores, bias) if t is not None and t.is_floating_point()]
    if weight_format != "float":
        diff = [t for t in diff if t is not cores]
    with torch.enable_grad():
        leaves = {id(t): t.detach().requires_grad_(True) for t in diff}
        y = reference_linear(leaves.get(id(x), x), leaves.get(id(cores), cores), bases,
                             leaves.get(id(bias), bias) if bias is not None else None, scales,
                             weight_format, group_size, activation)
        grads = torch.autograd.grad(y, list(leaves.values()), grad)
    by_id = dict(zip(leaves.keys(), grads))
    return (by_id.get(id(x)), by_id.get(id(cores)), None,
            by_id.get(id(bias)) if bias is not None else None, None, None, None, None)


phm_linear.register_autograd(_linear_backward, setup_context=_linear_setup)


@torch.library.custom_op("phm::phm_ffn", mutates_args=())
def phm_ffn(x: Tensor, bases: Tensor, gate_cores: Tensor | None, up_cores: Tensor, down_cores: Tensor,
            gate_bias: Tensor | None = None, up_bias: Tensor | None = None,
            down_bias: Tensor | None = None, gate_scales: Tensor | None = None,
            up_scales: Tensor | None = None, down_scales: Tensor | None = None,
            weight_format: str = "float", group_size: int = 0, activation: str = "silu",
            mlp_type: str = "swiglu") -> Tensor:
    """PHMFFN: swiglu y = down(act(gate(x))·up(x)); plain y = down(act(up(x))). (…, d) → (…, d)."""
    if _use_kernels(x):
        from phm.trt_plugins.kernels.launch import phm_ffn as launch
        return launch(x, bases, up_cores, down_cores, gate_cores, gate_bias, up_bias, down_bias,
                      gate_scales, up_scales, down_scales, weight_format, group_size, activation,
                      mlp_type)
    return reference_ffn(x, bases, gate_cores, up_cores, down_cores, gate_bias, up_bias, down_bias,
                         gate_scales, up_scales, down_scales, weight_format, group_size, activation,
                         mlp_type).clone()


@phm_ffn.register_fake
def _(x, bases, gate_cores, up_cores, down_cores, *rest):
    return x.new_empty(*x.shape[:-1], bases.shape[-1] * down_cores.shape[0])
