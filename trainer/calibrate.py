"""Activation-weighted (data-aware) PHM initialisation (docs/design.md §1, "fitting the cores to real
activations"): ridge regression of each dense layer's outputs on the PHM-mixed inputs.

For one layer with input covariance C = Σ_t x_t x_tᵀ (over real tokens of the calibration data,
collected in teacher mode), the cores minimise

    Σ_t ‖PHM(x_t) − W x_t‖² + α ‖A − A_proj‖²_F,      α = ridge · tr(G) / (B·d_in/n)

where A_proj is the closed-form weight-space projection and G = ZᵀZ the Gram matrix of the mixed
inputs. Both G and the right-hand side are linear in C, so only C (d_in × d_in) is accumulated per
layer, never the activations. White inputs (C ∝ I) give back A_proj exactly; the ridge term
shrinks towards it where the calibration data say little (a plain least-squares fit over-fits
wide down_proj layers on few tokens).
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from .inject import phm_wrappers, teacher_mode

__all__ = ["calibrate_phm", "fit_cores", "input_covariances"]

log = logging.getLogger(__name__)


def fit_cores(weight: torch.Tensor, cov: torch.Tensor, bases: torch.Tensor, prior: torch.Tensor,
              ridge: float = 1e-2) -> torch.Tensor:
    """Cores (d_out/n, B, d_in/n) minimising the activation-weighted error (module docstring).

    weight: dense (d_out, d_in); cov: Σ x xᵀ (d_in, d_in); bases: (B, n, n); prior: A_proj cores.
    """
    num_bases, n, _ = bases.shape
    d_out, d_in = weight.shape
    m, k = d_out // n, d_in // n
    h = bases.double()
    c = cov.double().view(n, k, n, k)                          # C[j, p, l, q]
    w = weight.detach().double().view(n, m, n, k)              # W[i, r, l, q] = block (i, l)
    gram = torch.einsum("bij,cil,jplq->bpcq", h, h, c).reshape(num_bases * k, num_bases * k)
    rhs = torch.einsum("bij,jplq,irlq->bpr", h, c, w).reshape(num_bases * k, m)
    alpha = ridge * torch.diagonal(gram).mean().clamp_min(1e-12)
    a0 = prior.detach().double().reshape(m, num_bases * k).t()  # A_catᵀ (B·k, m)
    eye = torch.eye(num_bases * k, dtype=torch.float64)
    sol = torch.linalg.solve(gram + alpha * eye, rhs + alpha * a0)
    return sol.t().reshape(m, num_bases, k).to(prior.dtype)


@contextlib.contextmanager
def _collect(model: nn.Module, token_mask: dict):
    covs: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name):
        def fn(module, args, _out):
            x = args[0].detach()
            rows = x.reshape(-1, x.shape[-1])
            mask = token_mask.get("mask")
            if mask is not None and mask.numel() == rows.shape[0]:  # language tokens: drop padding
                rows = rows[mask.reshape(-1).bool()]
            rows = rows.double()
            covs[name] = covs.get(name, 0) + rows.t() @ rows
        return fn

    for name, wrapper in phm_wrappers(model):
        handles.append(wrapper.base_layer.register_forward_hook(hook(name)))
    try:
        yield covs
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def input_covariances(model: nn.Module, batches, progress: bool = False, total: int | None = None) -> dict[str, torch.Tensor]:
    """Σ x xᵀ of every PHM wrapper's input over the real tokens of `batches` (teacher mode);
    `progress`: a bar over the batches (`total` of them, when the caller knows)."""
    from tqdm.auto import tqdm

    token_mask: dict = {}
    with teacher_mode(model), _collect(model, token_mask) as covs:
        for batch in tqdm(batches, total=total, desc="calibration: activations", unit="batch", disable=not progress,
                          dynamic_ncols=True):
            token_mask["mask"] = batch.get("attention_mask")
            model(**batch)
    return covs


@torch.no_grad()
def calibrate_phm(model: nn.Module, batches, ridge: float = 1e-2, progress: bool = False,
                  total: int | None = None) -> int:
    """Refit every PHM wrapper's cores to the activations of `batches`; returns the layer count.

    `batches`: iterable of model keyword dicts (input_ids, attention_mask, …). Call right after
    inject_phm (projection init), before training. Biases stay the dense ones. `progress`: bars
    over the batches (`total`) and over the layers fitted (the long part on large models).
    """
    from tqdm.auto import tqdm

    covs = input_covariances(model, batches, progress, total)
    wrappers = dict(phm_wrappers(model))
    for name, cov in tqdm(covs.items(), total=len(covs), desc="calibration: fitting cores", unit="layer",
                          disable=not progress, dynamic_ncols=True):
        wrapper = wrappers[name]
        base = wrapper.base_layer
        weight = base.weight.t() if type(base).__name__ == "Conv1D" else base.weight
        wrapper.phm.cores.copy_(fit_cores(weight, cov, wrapper.phm.bases, wrapper.phm.cores, ridge))
    log.info("calibrated %d PHM layers on real activations (ridge %g)", len(covs), ridge)
    return len(covs)
