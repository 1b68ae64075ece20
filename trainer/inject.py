"""Put PHM layers into a Hugging Face model: config, residual-interpolated wrapper, inject, drop.

    cfg = PHMConfig(n=2, num_bases=2, top_k_b3=12)
    targets = inject_phm(model, cfg)           # every MLP linear -> PHMResidualLinear (λ = 0)
    set_lambda(model, 0.5)                     # y = (1-λ)·W x + λ·PHM(x)
    with teacher_mode(model): ...              # λ = 0 everywhere: the original model, no copy
    drop_dense(model)                          # wrappers -> bare PHMLinear (PHM-only model)

Like peft's injected layers, the wrapper keeps `base_layer` and adds to it. HF GPT-2's Conv1D
(weight stored (in, out)) is handled explicitly.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .arch import find_mlp_blocks
from .hypercomplex import BASIS_FAMILIES, PHMLinear

__all__ = ["PHMConfig", "PHMResidualLinear", "PHMTarget", "drop_dense", "inject_phm", "phm_targets", "phm_wrappers",
           "restore_dense", "set_lambda", "teacher_mode"]

CONFIG_FORMAT_VERSION = 1
TOWERS = ("language", "vision")
ROLES = ("gate", "up", "down")


@dataclass
class PHMConfig:
    """What to replace and how. Serialised into phm_config.json (with format_version)."""

    n: int = 2                       # hypercomplex dimension; every target dim must divide by it
    num_bases: int = 2               # default B_l (paper: 2; B/n² of the dense bytes)
    bases: str = "default"           # basis family name (phm.trainer.hypercomplex.BASIS_FAMILIES)
    towers: tuple = ("language",)    # paper swaps the vision tower too; opt in with ("language", "vision")
    projections: tuple = ROLES       # which roles of each MLP block to replace
    top_k_b3: int = 0                # paper preset: the top K language layers get B = 3
    layer_num_bases: dict = field(default_factory=dict)  # {regex on module path: B}, wins over the rest
    init: str = "projection"         # "projection" (closed-form least squares) or "random"

    def __post_init__(self):
        self.towers, self.projections = tuple(self.towers), tuple(self.projections)
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n!r}")
        if self.bases not in BASIS_FAMILIES:
            raise ValueError(f"unknown basis family {self.bases!r}; known: {', '.join(BASIS_FAMILIES)}")
        for b in (self.num_bases, *self.layer_num_bases.values(), *([3] if self.top_k_b3 else [])):
            if not isinstance(b, int) or not 1 <= b <= self.n ** 2:
                raise ValueError(f"num_bases must be in 1..{self.n ** 2} for n={self.n}, got {b!r}")
        if not self.towers or set(self.towers) - set(TOWERS):
            raise ValueError(f"towers must be a non-empty subset of {TOWERS}, got {self.towers}")
        if not self.projections or set(self.projections) - set(ROLES):
            raise ValueError(f"projections must be a non-empty subset of {ROLES}, got {self.projections}")
        if not isinstance(self.top_k_b3, int) or self.top_k_b3 < 0:
            raise ValueError(f"top_k_b3 must be a non-negative integer, got {self.top_k_b3!r}")
        if self.init not in ("projection", "random"):
            raise ValueError(f"init must be 'projection' or 'random', got {self.init!r}")

    def to_dict(self) -> dict:
        return {"format_version": CONFIG_FORMAT_VERSION, **asdict(self),
                "towers": list(self.towers), "projections": list(self.projections)}

    @classmethod
    def from_dict(cls, data: dict) -> "PHMConfig":
        data = dict(data)
        version = data.pop("format_version", None)
        if version != CONFIG_FORMAT_VERSION:
            raise ValueError(f"PHM config format_version {version!r} is not supported (expected {CONFIG_FORMAT_VERSION})")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


@dataclass
class PHMTarget:
    """One linear chosen for PHM: its path, block, role, B and dense shape."""

    name: str
    block: str
    tower: str
    layer: int
    role: str
    num_bases: int
    in_features: int
    out_features: int
    bias: bool
    transposed: bool          # HF Conv1D (GPT-2): weight is (in, out)


def _dense_weight(module: nn.Module) -> tuple[torch.Tensor, bool]:
    """(out, in) weight of an nn.Linear or HF Conv1D, and whether it was transposed."""
    if isinstance(module, nn.Linear):
        return module.weight, False
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return module.weight.t(), True
    raise ValueError(f"{type(module).__name__} is not a supported MLP linear (nn.Linear or HF Conv1D)")


def phm_targets(model: nn.Module, config: PHMConfig) -> list[PHMTarget]:
    """Dry run: the linears `inject_phm` would replace, with their B. Validates divisibility."""
    modules = dict(model.named_modules())
    blocks = find_mlp_blocks(model, config.towers)
    top_layers = sorted({b.layer for b in blocks if b.tower == "language"})[-config.top_k_b3:] if config.top_k_b3 else []
    targets, matched = [], set()
    for block in blocks:
        for role, path in block.projections.items():
            if role not in config.projections:
                continue
            module = modules[path]
            if isinstance(module, PHMResidualLinear):
                raise ValueError(f"{path} already holds a PHM layer")
            weight, transposed = _dense_weight(module)
            d_out, d_in = weight.shape
            if d_in % config.n or d_out % config.n:
                raise ValueError(f"layer {path}: shape (out={d_out}, in={d_in}) is not divisible by n={config.n}")
            num_bases = 3 if (block.tower == "language" and block.layer in top_layers) else config.num_bases
            for pattern, b in config.layer_num_bases.items():
                if re.fullmatch(pattern, path) or re.fullmatch(pattern, block.name):
                    num_bases = b
                    matched.add(pattern)
            targets.append(PHMTarget(path, block.name, block.tower, block.layer, role, num_bases, d_in, d_out,
                                     getattr(module, "bias", None) is not None, transposed))
    unmatched = [p for p in config.layer_num_bases if p not in matched]
    if unmatched:  # a typo would otherwise train every layer at the default B without a word
        example = targets[0].name if targets else "no layer is replaced"
        raise ValueError(f"layer_num_bases pattern {unmatched[0]!r} matches no replaced layer "
                         f"(patterns match a whole module path such as {example!r}, or an MLP block name)")
    return targets


class PHMResidualLinear(nn.Module):
    """y = (1 − λ)·base_layer(x) + λ·phm(x). λ = 0 returns base_layer(x) exactly (teacher).

    With `record_recon = True` each forward also stores `recon_terms`, the two sums of the
    normalised reconstruction error ‖phm(x) − W x‖² / ‖W x‖² (dense output detached: it pulls the
    PHM path towards the dense one, not the other way; kept apart so that data-parallel processes
    can divide by the sum over all of them), computing whichever path λ would have skipped.

    The PHM path runs in its cores' dtype: fp32 master cores under a bf16/fp16 frozen base
    (inject_phm) see their input in fp32 and hand back the base's dtype.
    """

    def __init__(self, base_layer: nn.Module, phm: PHMLinear):
        super().__init__()
        self.base_layer = base_layer
        self.phm = phm
        self.lam = 0.0  # plain float: scheduled per step by the trainer, not a parameter
        self.record_recon = False
        self.recon_terms: tuple[torch.Tensor, torch.Tensor] | None = None  # (‖phm(x) − W x‖², ‖W x‖²)

    @property
    def recon(self) -> torch.Tensor | None:
        """‖phm(x) − W x‖² / ‖W x‖² of the last recorded forward (None: none recorded)."""
        if self.recon_terms is None:
            return None
        err, ref = self.recon_terms
        return err / ref.clamp_min(1e-8)

    def _phm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.phm.cores.dtype
        return self.phm(x) if x.dtype == dtype else self.phm(x.to(dtype)).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.record_recon:
            dense, phm = self.base_layer(x), self._phm(x)
            target = dense.detach().float()
            self.recon_terms = ((phm.float() - target).pow(2).sum(), target.pow(2).sum())
            return dense if self.lam <= 0.0 else phm if self.lam >= 1.0 else torch.lerp(dense, phm, self.lam)
        if self.lam <= 0.0:
            return self.base_layer(x)
        if self.lam >= 1.0:
            return self._phm(x)
        return torch.lerp(self.base_layer(x), self._phm(x), self.lam)

    def extra_repr(self) -> str:
        return f"lam={self.lam:.3f}"


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, child, new)


def inject_phm(model: nn.Module, config: PHMConfig) -> list[PHMTarget]:
    """Wrap every target linear in a PHMResidualLinear (λ = 0); returns the targets."""
    targets = phm_targets(model, config)
    for t in targets:
        base = model.get_submodule(t.name)
        weight, _ = _dense_weight(base)
        bias = getattr(base, "bias", None)
        if weight.dtype in (torch.float16, torch.bfloat16):  # a half-precision frozen base: fp32 master cores
            weight, bias = weight.float(), None if bias is None else bias.float()
        if config.init == "projection":
            phm = PHMLinear.from_dense(weight.detach(), None if bias is None else bias.detach(),
                                       n=config.n, num_bases=t.num_bases, bases=config.bases)
        else:
            phm = PHMLinear(t.in_features, t.out_features, n=config.n, num_bases=t.num_bases, bias=bias is not None,
                            bases=config.bases, device=weight.device, dtype=weight.dtype)
            if bias is not None:
                with torch.no_grad():
                    phm.bias.copy_(bias)
        _replace(model, t.name, PHMResidualLinear(base, phm))
    return targets


def _wrappers(model: nn.Module):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PHMResidualLinear)]


def phm_wrappers(model: nn.Module) -> list[tuple[str, PHMResidualLinear]]:
    """(module path, wrapper) of every PHMResidualLinear, in module order."""
    return _wrappers(model)


def set_lambda(model: nn.Module, lam: float | dict) -> None:
    """Set λ for every wrapper (a float) or per module path (a dict path -> λ)."""
    for name, m in _wrappers(model):
        m.lam = float(lam[name] if isinstance(lam, dict) else lam)


@contextlib.contextmanager
def teacher_mode(model: nn.Module):
    """λ = 0 everywhere inside the block: the original dense model, with no second copy."""
    wrappers = _wrappers(model)
    saved = {name: (m.lam, m.record_recon) for name, m in wrappers}
    for _, m in wrappers:
        m.lam, m.record_recon = 0.0, False
    try:
        yield model
    finally:
        for name, m in wrappers:
            m.lam, m.record_recon = saved[name]


def restore_dense(model: nn.Module) -> int:
    """Undo inject_phm: each wrapper's dense layer back in its place (the PHM layers discarded)."""
    wrappers = _wrappers(model)
    for name, m in wrappers:
        _replace(model, name, m.base_layer)
    return len(wrappers)


def drop_dense(model: nn.Module) -> int:
    """Replace each wrapper by its PHMLinear, freeing the dense weights. Returns the count."""
    wrappers = _wrappers(model)
    for name, m in wrappers:
        _replace(model, name, m.phm)
    return len(wrappers)
