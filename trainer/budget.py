"""Budget mode: B per MLP block chosen from measured sensitivity to meet a size.

    phm-train MODEL --target-size 0.6 …      # the whole model at 60 % of its parameters
    phm-train MODEL --target-gb 1.2 …        # or at 1.2 GB of 16-bit weights

Sensitivity is measured at the model's output: for every MLP block and every B in 1..n², that
block alone is replaced by its calibrated init (calibrate.py's ridge fit on the input covariance
of real calibration tokens; one B per block, gate/up/down together, what `layer_num_bases` sets)
and the model's output is compared with the dense model's on calibration batches: KL per real token
for LMs, 1 − cosine of the sentence embeddings for encoders. (Each layer's own relative output
error, tr((W − W_B) C (W − W_B)ᵀ) / tr(W C Wᵀ), chooses worse than uniform B on SmolLM2: equal
errors in different layers do not cost the output equally; docs/trainer.md § Budget mode.) The choice
starts every block at B = 1 and spends the budget greedily on the upgrade B → B + 1 with the largest
error drop per added parameter, while it fits; the result is written as `layer_num_bases` (one
exact block name per block) into the PHM config, so phm_config.json records it. Sizes count every
parameter of the model as saved (dense parts, PHM cores and biases), 2 bytes each for --target-gb.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass

import torch
from torch import nn

from .calibrate import fit_cores, input_covariances
from .hypercomplex import basis_family, project_dense
from .inject import PHMConfig, inject_phm, phm_wrappers, restore_dense

__all__ = ["BudgetChoice", "choose", "choose_bases", "sensitivity"]

log = logging.getLogger(__name__)

GB = 1e9
BYTES_PER_PARAM = 2  # --target-gb counts 16-bit weights (what an fp16/bf16 checkpoint or engine holds)


@dataclass(frozen=True)
class BudgetChoice:
    """What budget mode chose: B per block, the sizes, and the errors behind it."""

    num_bases: dict          # block name → B
    target_params: int
    params: int              # the whole model's parameters with this choice
    original_params: int
    errors: dict             # block name → {B: mean relative output error}

    @property
    def size_fraction(self) -> float:
        return self.params / self.original_params

    def phm_config(self, base: PHMConfig) -> PHMConfig:
        return dataclasses.replace(base, top_k_b3=0,
                                   layer_num_bases={re.escape(b): n for b, n in self.num_bases.items()})

    def table(self) -> str:
        lines = [f"budget: {self.params / 1e6:.2f} M parameters = {100 * self.size_fraction:.2f} % of "
                 f"{self.original_params / 1e6:.2f} M (asked {100 * self.target_params / self.original_params:.2f} %)",
                 f"{'block':<40}{'B':>3}  relative output error at B = 1..n²"]
        for block, b in self.num_bases.items():
            errs = "  ".join(f"{self.errors[block][k]:.4f}" for k in sorted(self.errors[block]))
            lines.append(f"{block:<40}{b:>3}  {errs}")
        return "\n".join(lines)


def _weight(base: nn.Module) -> torch.Tensor:
    return base.weight.t() if type(base).__name__ == "Conv1D" else base.weight


def _main_output(model: nn.Module, batch: dict) -> tuple[torch.Tensor, bool]:
    """(the logits or, for an encoder, the last hidden state of one forward; whether they are logits)."""
    out = model(**batch)
    return (out.logits, True) if hasattr(out, "logits") else (out.last_hidden_state, False)


def _divergence(model: nn.Module, batch: dict, reference: torch.Tensor) -> float:
    """How far the model's output on `batch` is from the teacher's `reference`: KL per real token
    (LMs), mean 1 − cosine of the sentence embeddings (encoders)."""
    from .losses import embedding_kd_loss, kd_loss
    from .models import mean_pool

    (main, lm), mask = _main_output(model, batch), batch.get("attention_mask")
    if lm:
        return float(kd_loss(main, reference, 1.0, mask))
    mask = mask if mask is not None else torch.ones(main.shape[:2])
    return float(embedding_kd_loss(mean_pool(main, mask), mean_pool(reference, mask)))


@torch.no_grad()
def sensitivity(model: nn.Module, phm: PHMConfig, batches, ridge: float = 1e-2, progress: bool = False,
                total: int | None = None, probe_batches: int = 2) -> tuple[dict, dict, list]:
    """({block: {B: error}}, {block: {B: core + bias parameters}}, targets) of the dense `model`:
    for every MLP block and B, the block alone replaced by its calibrated PHM layers (fit on the
    input covariances of all `batches`), the model's output divergence from the teacher's on the
    first `probe_batches` (module doc). The model is left as it was (dense, no PHM)."""
    from tqdm.auto import tqdm

    from .hypercomplex import PHMLinear

    batches = list(batches)
    targets = inject_phm(model, dataclasses.replace(phm, num_bases=1, top_k_b3=0, layer_num_bases={}))
    try:
        covs = input_covariances(model, batches, progress, total)
        wrappers = dict(phm_wrappers(model))
        probes = batches[:probe_batches]
        references = [_main_output(model, b)[0] for b in probes]  # every wrapper at λ = 0: the teacher
        blocks: dict[str, list] = {}
        for t in targets:
            blocks.setdefault(t.block, []).append(t)
        errors, params = {}, {}
        bar = tqdm(total=len(blocks) * phm.n ** 2, desc="budget: sensitivity", unit="fit", disable=not progress,
                   dynamic_ncols=True)
        for block, members in blocks.items():
            errors[block], params[block] = {}, {}
            for b in range(1, phm.n ** 2 + 1):
                bases = basis_family(phm.n, b, phm.bases, dtype=torch.float64)
                for t in members:
                    wrapper = wrappers[t.name]
                    weight = _weight(wrapper.base_layer).double()
                    cores = fit_cores(weight, covs[t.name], bases, project_dense(weight, bases), ridge)
                    bias = getattr(wrapper.base_layer, "bias", None)
                    layer = PHMLinear(t.in_features, t.out_features, n=phm.n, num_bases=b, bias=bias is not None,
                                      bases=phm.bases, dtype=wrapper.phm.cores.dtype)
                    layer.cores.copy_(cores)
                    if bias is not None:
                        layer.bias.copy_(bias)
                    wrapper.phm, wrapper.lam = layer.to(weight.device), 1.0
                errors[block][b] = sum(_divergence(model, p, r) for p, r in zip(probes, references)) / len(probes)
                params[block][b] = sum(b * (t.out_features // phm.n) * (t.in_features // phm.n)
                                       + (t.out_features if t.bias else 0) for t in members)
                bar.update(1)
            for t in members:
                wrappers[t.name].lam = 0.0
        bar.close()
    finally:
        restore_dense(model)
    return errors, params, targets


def _greedy(errors: dict, params: dict, budget: int) -> dict:
    """B per block: all at 1, then the best error drop per added parameter while it fits."""
    choice = {block: 1 for block in errors}
    spent = sum(params[b][1] for b in choice)
    while True:
        best, best_rate = None, 0.0
        for block, b in choice.items():
            if b + 1 not in errors[block]:
                continue
            cost = params[block][b + 1] - params[block][b]
            gain = errors[block][b] - errors[block][b + 1]
            if spent + cost <= budget and gain > 0 and gain / cost > best_rate:
                best, best_rate = block, gain / cost
        if best is None:
            return choice
        spent += params[best][choice[best] + 1] - params[best][choice[best]]
        choice[best] += 1


def choose_bases(model: nn.Module, phm: PHMConfig, batches, target_size: float | None = None,
                 target_gb: float | None = None, ridge: float = 1e-2, progress: bool = False,
                 total: int | None = None) -> BudgetChoice:
    """B per block of the dense `model` meeting `target_size` (fraction of its parameters) or
    `target_gb` (GB of 16-bit weights); ValueError (one line, the reachable range) if it cannot."""
    if (target_size is None) == (target_gb is None):
        raise ValueError("budget mode takes one of target_size and target_gb")
    original = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    measured = sensitivity(model, phm, batches, ridge, progress, total)
    target = int(target_size * original) if target_size is not None else int(target_gb * GB / BYTES_PER_PARAM)
    what = f"{target_size}" if target_size is not None else f"{target_gb} GB"
    return choose(measured, original, target, what)


def choose(measured: tuple, original: int, target: int, what: str = "") -> BudgetChoice:
    """The choice for `target` parameters from `sensitivity`'s measurements (one measurement serves
    any number of targets)."""
    errors, params, targets = measured
    replaced = sum(t.in_features * t.out_features + (t.out_features if t.bias else 0) for t in targets)
    rest = original - replaced  # what stays dense
    lo = rest + sum(p[1] for p in params.values())
    hi = rest + sum(p[max(p)] for p in params.values())
    if target < lo:
        raise ValueError(f"budget {what or target} is below the smallest PHM model ({lo / original:.3f} of the "
                         f"parameters, {lo * BYTES_PER_PARAM / GB:.3f} GB: B = 1 everywhere); the reachable range is "
                         f"{lo / original:.3f}–{hi / original:.3f}")
    choice = _greedy(errors, params, target - rest)
    size = rest + sum(params[b][n] for b, n in choice.items())
    result = BudgetChoice(choice, target, size, original, errors)
    log.info("%s", result.table())
    return result
