"""Weight-only quantization of PHM cores in the layouts the kernels read (spec.py module doc).

INT8: symmetric, one float32 scale per A_cat row r (d_out/n of them):
    q[r, b, c] = round(A[r, b, c] / s[r]),  s[r] = max_{b,c} |A[r, b, c]| / 127,  q ∈ [-127, 127]
INT4: symmetric, one float32 scale per (row, basis, group of `group_size` along k):
    q ∈ [-7, 7], s[r, b, g] = max |A[r, b, g·G : (g+1)·G]| / 7,
    packed two per int8 byte along k: byte c = (q[2c] & 0xF) | (q[2c+1] << 4)  (low nibble first).

>>> import torch
>>> cores = torch.randn(6, 2, 8)
>>> q, s = quantize_cores_int8(cores)
>>> q.dtype, tuple(s.shape)
(torch.int8, (6,))
>>> p, s4 = quantize_cores_int4(cores, group_size=4)
>>> tuple(p.shape), tuple(s4.shape)
((6, 2, 4), (6, 2, 2))
>>> bool((dequantize_cores_int4(p, s4, 4) - cores).abs().max() < 0.5)
True
"""

from __future__ import annotations

import torch

__all__ = [
    "dequantize_cores_int4",
    "dequantize_cores_int8",
    "pack_int4",
    "quantize_cores_int4",
    "quantize_cores_int8",
    "unpack_int4",
]


def _check_cores(cores: torch.Tensor) -> None:
    if cores.dim() != 3 or not cores.is_floating_point():
        raise ValueError(f"cores must be a float tensor (d_out/n, B, d_in/n), got "
                         f"{cores.dtype} {tuple(cores.shape)}")


def quantize_cores_int8(cores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, B, k) float → (q int8 (m, B, k), scales float32 (m,)), symmetric per A_cat row."""
    _check_cores(cores)
    c = cores.detach().float()
    amax = c.abs().amax(dim=(1, 2))
    scales = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(c / scales[:, None, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales.contiguous()


def dequantize_cores_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(m, B, k) int8, (m,) → (m, B, k) float32."""
    return q.float() * scales.float()[:, None, None]


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(..., k) integers in [-8, 7] → (..., k/2) int8, element 2c in the low nibble of byte c."""
    if q.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even last dimension, got {q.shape[-1]}")
    q = q.to(torch.int16)
    lo, hi = q[..., 0::2] & 0xF, q[..., 1::2] & 0xF
    byte = lo | (hi << 4)                                    # 0..255
    return torch.where(byte > 127, byte - 256, byte).to(torch.int8).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(..., k/2) int8 → (..., k) int8 in [-8, 7] (sign-extended nibbles, low nibble first)."""
    p = packed.to(torch.int16)
    lo = ((p & 0xF) ^ 8) - 8
    hi = (((p >> 4) & 0xF) ^ 8) - 8
    return torch.stack((lo, hi), dim=-1).flatten(-2).to(torch.int8)


def quantize_cores_int4(cores: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, B, k) float → (packed int8 (m, B, k/2), scales float32 (m, B, k/group_size))."""
    _check_cores(cores)
    m, nb, k = cores.shape
    if not isinstance(group_size, int) or group_size <= 0 or group_size % 2 or k % group_size:
        raise ValueError(f"int4 group_size must be even and divide d_in/n={k}, got {group_size!r}")
    c = cores.detach().float().reshape(m, nb, k // group_size, group_size)
    amax = c.abs().amax(dim=-1)
    scales = torch.where(amax > 0, amax / 7.0, torch.ones_like(amax))
    q = torch.round(c / scales[..., None]).clamp_(-7, 7).reshape(m, nb, k)
    return pack_int4(q), scales.contiguous()


def dequantize_cores_int4(packed: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """(m, B, k/2) packed int8, (m, B, k/G) → (m, B, k) float32."""
    q = unpack_int4(packed).float()
    return q * scales.float().repeat_interleave(group_size, dim=-1)
