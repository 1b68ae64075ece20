"""The PHM linear map: bases, forward, projection from dense, cost accounting.

This module is the one implementation of docs/design.md §1 that everything else (trainer, ONNX
reference, Triton kernels, tests) calls or is checked against.

    W = Σ_b H_b ⊗ A_b        H_b ∈ R^{n×n} fixed, A_b ∈ R^{(d_out/n)×(d_in/n)} learned

Block (i, j) of W is Σ_b H_b[i, j]·A_b, i.e. rows i·d_out/n…, columns j·d_in/n… (kron(H, A)
order). The forward never builds W:

    z_{i,b} = Σ_j H_b[i, j]·x_j          mixing: (T, n, d_in/n) -> (T, n, B, d_in/n)
    y_i     = z_i · A_catᵀ               one GEMM: (n·T) × (B·d_in/n) × (d_out/n)

Cores are stored in the A_cat layout, shape (d_out/n, B, d_in/n), so `cores.view(m, B·k)` is
A_cat = [A_1 | … | A_B] with no copy (the layout the kernels and the ONNX graph read too).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "BASIS_FAMILIES",
    "PHMCost",
    "PHMLinear",
    "basis_family",
    "cores_from_stack",
    "cores_to_stack",
    "kron_weight",
    "mixing_matrix",
    "phm_forward",
    "project_dense",
]

# n = 2: orthogonal under the Frobenius product, together spanning all 2×2 (docs/design.md §1).
# I, J give complex multiplication; K, L complete the span.
_N2 = {
    "I": ((1.0, 0.0), (0.0, 1.0)),
    "J": ((0.0, -1.0), (1.0, 0.0)),
    "K": ((1.0, 0.0), (0.0, -1.0)),
    "L": ((0.0, 1.0), (1.0, 0.0)),
}


def _kron_family(n: int) -> list[tuple[str, torch.Tensor]]:
    """Kronecker products of the n=2 family {I, J, K, L}: an orthogonal basis of R^{n×n}, n=2^k."""
    levels = int(round(math.log2(n)))
    named2 = [(k, torch.tensor(v, dtype=torch.float64)) for k, v in _N2.items()]
    out = []
    for combo in itertools.product(named2, repeat=levels):
        name = "".join(c[0] for c in combo)
        mat = combo[0][1]
        for c in combo[1:]:
            mat = torch.kron(mat, c[1])
        out.append((name, mat))
    return out


def _default_family(n: int) -> list[tuple[str, torch.Tensor]]:
    if n == 2:
        return [(k, torch.tensor(v, dtype=torch.float64)) for k, v in _N2.items()]
    if n == 4:
        # Quaternion left-multiplication units first (1, i, j, k = II, IJ, JK, JL), so B ≤ 4 gives
        # the quaternion PHM layer; the other 12 Kronecker products complete the span.
        fam = dict(_kron_family(4))
        first = ["II", "IJ", "JK", "JL"]
        return [(k, fam[k]) for k in first] + [(k, v) for k, v in fam.items() if k not in first]
    raise ValueError(f"basis family 'default' is defined for n in (2, 4), got n={n}; use 'units'")


def _units_family(n: int) -> list[tuple[str, torch.Tensor]]:
    """Matrix units E_ij (row-major): orthonormal, spanning, defined for every n ≥ 1."""
    out = []
    for i in range(n):
        for j in range(n):
            e = torch.zeros(n, n, dtype=torch.float64)
            e[i, j] = 1.0
            out.append((f"E{i}{j}", e))
    return out


def _kron_only(n: int) -> list[tuple[str, torch.Tensor]]:
    if n < 2 or n & (n - 1):
        raise ValueError(f"basis family 'kron' needs n a power of two ≥ 2, got n={n}")
    return _kron_family(n)


BASIS_FAMILIES = {"default": _default_family, "kron": _kron_only, "units": _units_family}


def basis_family(n: int, num_bases: int, family: str = "default", dtype=torch.float32) -> torch.Tensor:
    """The first `num_bases` matrices of a named family, shape (B, n, n).

    >>> basis_family(2, 2).tolist()
    [[[1.0, 0.0], [0.0, 1.0]], [[0.0, -1.0], [1.0, 0.0]]]
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"hypercomplex dimension n must be a positive integer, got {n!r}")
    if family not in BASIS_FAMILIES:
        raise ValueError(f"unknown basis family {family!r}; known: {', '.join(BASIS_FAMILIES)}")
    if not isinstance(num_bases, int) or not 1 <= num_bases <= n * n:
        raise ValueError(f"num_bases must be in 1..{n * n} for n={n}, got {num_bases!r}")
    mats = BASIS_FAMILIES[family](n)
    return torch.stack([m for _, m in mats[:num_bases]]).to(dtype)


def basis_names(n: int, num_bases: int, family: str = "default") -> list[str]:
    """Names of the matrices `basis_family` returns, e.g. ['I', 'J'] (stored in configs)."""
    basis_family(n, num_bases, family)  # validates
    return [name for name, _ in BASIS_FAMILIES[family](n)[:num_bases]]


def cores_to_stack(cores: torch.Tensor) -> torch.Tensor:
    """(d_out/n, B, d_in/n) A_cat layout -> (B, d_out/n, d_in/n), A_b = result[b]."""
    return cores.permute(1, 0, 2).contiguous()


def cores_from_stack(stack: torch.Tensor) -> torch.Tensor:
    """(B, d_out/n, d_in/n) -> (d_out/n, B, d_in/n) A_cat layout."""
    return stack.permute(1, 0, 2).contiguous()


def mixing_matrix(bases: torch.Tensor) -> torch.Tensor:
    """M of shape (n·B, n) with M[i·B + b, j] = H_b[i, j], so z = M @ x_blocks.

    >>> mixing_matrix(basis_family(2, 2)).tolist()
    [[1.0, 0.0], [0.0, -1.0], [0.0, 1.0], [1.0, 0.0]]
    """
    num_bases, n, _ = bases.shape
    return bases.permute(1, 0, 2).reshape(n * num_bases, n)


def kron_weight(cores: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """Materialise W = Σ_b H_b ⊗ A_b, shape (d_out, d_in). For tests and export checks only.

    `cores` in the A_cat layout (d_out/n, B, d_in/n).
    """
    stack = cores_to_stack(cores).to(bases.dtype)
    return sum(torch.kron(bases[b], stack[b]) for b in range(bases.shape[0]))


def phm_forward(x: torch.Tensor, cores: torch.Tensor, bases: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x Wᵀ + bias without materialising W.

    x: (..., d_in); cores: (d_out/n, B, d_in/n); bases: (B, n, n); bias: (d_out,) or None.
    Returns (..., d_out) in x's dtype.
    """
    m, num_bases, k = cores.shape
    n = bases.shape[-1]
    lead = x.shape[:-1]
    if x.shape[-1] != n * k:
        raise ValueError(f"input has {x.shape[-1]} features, the PHM layer expects {n * k}")
    mix = mixing_matrix(bases).to(dtype=x.dtype, device=x.device)
    xb = x.reshape(-1, n, k)                                  # (T, n, k)
    z = torch.matmul(mix, xb)                                 # (T, n·B, k): rows (i, b)
    z = z.reshape(-1, num_bases * k)                          # (T·n, B·k)
    y = torch.matmul(z, cores.reshape(m, num_bases * k).t())  # (T·n, m)
    y = y.reshape(*lead, n * m)                               # [y_0 | … | y_{n-1}]
    if bias is not None:
        y = y + bias
    return y


def project_dense(weight: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """Least-squares cores A = argmin ‖W − Σ_b H_b ⊗ A_b‖_F, A_cat layout (d_out/n, B, d_in/n).

    Normal equations in the bases' Gram matrix G_bc = ⟨H_b, H_c⟩_F: A = G⁻¹ · (Σ_ij H_c[i,j] W_ij).
    Exact when the bases span R^{n×n}. Blocks use the kron(H, A) layout (docs/design.md §1 trap).
    """
    num_bases, n, _ = bases.shape
    d_out, d_in = weight.shape
    if d_out % n or d_in % n:
        raise ValueError(f"weight of shape {tuple(weight.shape)} is not divisible by n={n}")
    w = weight.detach().to(torch.float64)
    h = bases.to(torch.float64)
    blocks = w.view(n, d_out // n, n, d_in // n).permute(0, 2, 1, 3)  # (n, n, m, k): block (i, j)
    rhs = torch.einsum("cij,ijmk->cmk", h, blocks)                    # ⟨H_c, W-blocks⟩
    gram = torch.einsum("bij,cij->bc", h, h)
    if torch.linalg.matrix_rank(gram) < num_bases:
        raise ValueError("PHM bases are linearly dependent; projection is ill-posed")
    stack = torch.einsum("bc,cmk->bmk", torch.linalg.inv(gram), rhs)
    return cores_from_stack(stack)


@dataclass(frozen=True)
class PHMCost:
    """Parameter, byte and MAC accounting of one PHM linear against its dense twin.

    MACs per token: `macs` is what the mix-then-GEMM forward does (B/n of dense plus the cheap
    mixing); `fused_macs` is the floor a kernel building W tiles on the fly reaches (min(B/n, 1)).
    """

    in_features: int
    out_features: int
    n: int
    num_bases: int
    bias: bool = True

    @property
    def core_params(self) -> int:
        return self.num_bases * self.out_features * self.in_features // (self.n * self.n)

    @property
    def params(self) -> int:
        return self.core_params + (self.out_features if self.bias else 0)

    @property
    def dense_params(self) -> int:
        return self.out_features * self.in_features + (self.out_features if self.bias else 0)

    def weight_bytes(self, bits: int = 32) -> int:
        return self.core_params * bits // 8

    def dense_weight_bytes(self, bits: int = 32) -> int:
        return self.out_features * self.in_features * bits // 8

    @property
    def macs(self) -> int:
        gemm = self.num_bases * self.in_features * self.out_features // self.n
        return gemm + self.num_bases * self.n * self.in_features

    @property
    def fused_macs(self) -> int:
        return min(self.num_bases * self.in_features * self.out_features // self.n,
                   self.in_features * self.out_features)

    @property
    def dense_macs(self) -> int:
        return self.in_features * self.out_features

    @property
    def byte_ratio(self) -> float:
        """Core bytes / dense weight bytes = B / n²."""
        return self.core_params / (self.out_features * self.in_features)


class PHMLinear(nn.Module):
    """Drop-in for nn.Linear whose weight is Σ_b H_b ⊗ A_b (never stored).

    Args:
        in_features, out_features: as nn.Linear; both must be divisible by n.
        n: hypercomplex dimension.
        num_bases: B, number of fixed bases (1..n²); core bytes are B/n² of dense.
        bias: learnable bias of shape (out_features,).
        bases: basis family name ('default', 'kron', 'units').

    Shapes: input (..., in_features) -> output (..., out_features); fp32/fp16/bf16.

    >>> layer = PHMLinear(8, 6, n=2, num_bases=2)
    >>> layer(torch.randn(3, 5, 8)).shape
    torch.Size([3, 5, 6])
    >>> layer.cost.core_params
    24
    """

    def __init__(self, in_features: int, out_features: int, n: int = 2, num_bases: int = 2,
                 bias: bool = True, bases: str = "default", device=None, dtype=None):
        super().__init__()
        h = basis_family(n, num_bases, bases)  # validates n, B and the family name
        for name, dim in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(dim, int) or dim <= 0 or dim % n:
                raise ValueError(f"{name}={dim} is not a positive multiple of n={n}")
        self.in_features, self.out_features = in_features, out_features
        self.n, self.num_bases, self.basis_family_name = n, num_bases, bases
        factory = {"device": device, "dtype": dtype}
        self.register_buffer("bases", h.to(device=device, dtype=dtype or torch.get_default_dtype()),
                             persistent=False)  # fixed, recorded in phm_config.json
        self.cores = nn.Parameter(torch.empty(out_features // n, num_bases, in_features // n, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Match nn.Linear's weight scale: each W entry sums B_eff = mean_ij Σ_b H_b[i,j]² core
        # entries, so divide the uniform bound by sqrt(B_eff).
        bases = self.bases if not self.bases.is_meta else basis_family(self.n, self.num_bases, self.basis_family_name)
        b_eff = float((bases.double() ** 2).sum(0).mean())  # (a model planned on the meta device: its CPU twin)
        bound = 1.0 / math.sqrt(self.in_features) / math.sqrt(max(b_eff, 1e-12))
        nn.init.uniform_(self.cores, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1.0 / math.sqrt(self.in_features), 1.0 / math.sqrt(self.in_features))

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, n: int = 2,
                   num_bases: int = 2, bases: str = "default") -> "PHMLinear":
        """Closed-form least-squares projection of a dense (d_out, d_in) weight."""
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
        d_out, d_in = weight.shape
        layer = cls(d_in, d_out, n=n, num_bases=num_bases, bias=bias is not None, bases=bases,
                    device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.cores.copy_(project_dense(weight, layer.bases))
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return phm_forward(x, self.cores, self.bases, self.bias)

    def to_dense(self) -> torch.Tensor:
        """Materialised W, shape (out_features, in_features), in the cores' dtype."""
        return kron_weight(self.cores, self.bases).to(self.cores.dtype)

    @property
    def cost(self) -> PHMCost:
        return PHMCost(self.in_features, self.out_features, self.n, self.num_bases, self.bias is not None)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, n={self.n}, "
                f"num_bases={self.num_bases}, bases={self.basis_family_name!r}, bias={self.bias is not None}")
