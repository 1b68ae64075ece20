"""Calibration activations from the PyTorch model, layer by layer: the rows each W8A8 linear of a
graph reads, captured by forward pre-hooks while the model runs on calibration prompts.

    targets = match_modules(plan, model, source)           # graph input tensor → the module reading it
    targets |= match_phm_modules({x: cores}, model, source)  # a PHM node's input → its PHMLinear
    capture(model, targets, prompts, rows=MAX_ROWS, done=lambda name, x: ...)

The model is the exporter's `ModelSource.streaming()` model, whose weights are read from the
checkpoint module by module, so calibration holds one module's weights at a time whatever the
model's size, as GPTQ-style tools calibrate. Prompts run as right-padded batches (a causal model's
real positions never see the padding; an encoder gets the attention mask) and only real tokens'
rows are kept, in prompt order, which is the order `choose_scale` splits into fitted and held-out
halves. A tensor's rows go to `done` as soon as it has `rows` of them, or in the last batch, so each
tensor's scale is chosen and its rows dropped while the forward goes on; rows of earlier batches
wait in a temporary file per tensor, not in memory.

A graph linear is matched to its module by where its weight comes from: a streamed weight by its
checkpoint tensor (and orientation), a small inline one by its values.
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .quantize import Int8Plan
from .weights import StreamedWeight

__all__ = ["BATCH_TOKENS", "capture", "match_modules", "match_phm_modules"]

BATCH_TOKENS = 4096     # padded tokens per calibration forward
LOGIT_BYTES = 256 << 20  # logits one forward may hold when the LM head's input is captured


def _kn(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear module: nn.Linear (weight (out, in)) or GPT-2's Conv1D (weight (in, out))."""
    w = getattr(module, "weight", None)
    if isinstance(module, nn.Embedding) or not isinstance(w, torch.Tensor) or w.ndim != 2:
        return None
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if hasattr(module, "nf"):  # transformers.pytorch_utils.Conv1D
        return tuple(w.shape)
    return None


def _kn_weight(lin) -> tuple:
    """The graph linear's weight shape as (K, N)."""
    shape = tuple(lin.weight.shape)
    return shape[::-1] if lin.channel_axis == 0 else shape


def _module_values(module: nn.Module, source) -> np.ndarray:
    """A small module weight's values as (K, N) float32 (from its source: the model holds placeholders)."""
    src = source.source_of(module.weight)
    w = np.asarray(src.load() if src is not None else module.weight.detach().numpy(), np.float32)
    return w.T if isinstance(module, nn.Linear) else w


def match_modules(plan: Int8Plan, model: nn.Module, source) -> dict[str, nn.Module]:
    """Each W8A8 input tensor of the plan → a module whose input it is (ValueError if one has none)."""
    linears = {name: m for name, m in model.named_modules() if _kn(m) is not None}
    by_source = {}
    for name, m in linears.items():
        src = source.source_of(m.weight)
        if src is not None:
            by_source.setdefault((src.ident, _kn(m)), name)
    targets = {}
    for tensor in plan.activation_tensors:
        for lin in plan.readers(tensor):
            kn = _kn_weight(lin)
            if isinstance(lin.weight, StreamedWeight):
                found = by_source.get((lin.weight.source.ident, kn))
            else:
                w = np.asarray(lin.weight, np.float32)
                w = w.T if lin.channel_axis == 0 else w
                found = next((name for name, m in linears.items() if _kn(m) == kn and w.size <= 1 << 16
                              and np.allclose(_module_values(m, source), w, rtol=1e-3, atol=1e-6)), None)
            if found is not None:
                targets[tensor] = linears[found]
                break
        else:
            raise ValueError(f"INT8 calibration: no module of the model computes the linear {plan.readers(tensor)[0].node.name}")
    return targets


def match_phm_modules(inputs: dict[str, object], model: nn.Module, source) -> dict[str, nn.Module]:
    """Each PHM node input tensor → the PHMLinear whose cores are the graph's `inputs[name]` (the
    node's first input cores, (m, B, k): a streamed view of the checkpoint tensor, or inline values)."""
    from phm.trainer import PHMLinear

    phm = [m for m in model.modules() if isinstance(m, PHMLinear)]
    targets = {}
    for name, cores in inputs.items():
        if isinstance(cores, StreamedWeight):
            found = next((m for m in phm if (src := source.source_of(m.cores)) is not None
                          and src.ident == cores.source.ident), None)
        else:
            found = next((m for m in phm if tuple(m.cores.shape) == cores.shape
                          and np.allclose(_phm_values(m, source), cores, rtol=1e-3, atol=1e-6)), None)
        if found is None:
            raise ValueError(f"calibration: no PHM layer of the model holds the cores read by {name}")
        targets[name] = found
    return targets


def _phm_values(module: nn.Module, source) -> np.ndarray:
    src = source.source_of(module.cores)
    return np.asarray(src.load() if src is not None else module.cores.detach().numpy(), np.float32).reshape(
        module.cores.shape)


def _batches(prompts: list[list[int]], rows: int, tokens: int) -> list[list[list[int]]]:
    """Consecutive prompts in batches of at most `tokens` padded tokens, until `rows` real tokens."""
    batches, batch, real = [], [], 0
    for ids in prompts:
        if real >= rows:
            break
        if batch and (len(batch) + 1) * max(len(ids), *map(len, batch)) > tokens:
            batches.append(batch)
            batch = []
        batch.append(ids)
        real += len(ids)
    return batches + ([batch] if batch else [])


def _padded(batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of a right-padded batch, both (B, T) int64."""
    width = max(map(len, batch))
    ids = torch.zeros((len(batch), width), dtype=torch.int64)
    mask = torch.zeros((len(batch), width), dtype=torch.int64)
    for i, p in enumerate(batch):
        ids[i, :len(p)] = torch.tensor(p)
        mask[i, :len(p)] = 1
    return ids, mask


def _forward(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, lm_head: bool) -> None:
    kwargs = {"input_ids": ids, "attention_mask": mask}
    params = inspect.signature(model.forward).parameters
    if "use_cache" in params:
        kwargs["use_cache"] = False
    if not lm_head and "logits_to_keep" in params:  # nobody reads the logits: one position's worth
        kwargs["logits_to_keep"] = 1
    with torch.no_grad():
        model(**kwargs)


class _Rows:
    """Each target tensor's captured rows, appended batch by batch to a file of its own (a float32
    (R, K) matrix): rows held in memory are one batch of one tensor, whatever the model's depth."""

    def __init__(self, folder: Path, names: list[str]):
        self.paths = {name: folder / f"{i}.rows" for i, name in enumerate(names)}
        self.count = dict.fromkeys(names, 0)
        self.width: dict[str, int] = {}

    def add(self, name: str, x: np.ndarray) -> int:
        with open(self.paths[name], "ab") as f:
            f.write(np.ascontiguousarray(x, np.float32).tobytes())
        self.width[name] = x.shape[1]
        self.count[name] += x.shape[0]
        return self.count[name]

    def take(self, name: str, rows: int) -> np.ndarray:
        """The first `rows` rows of `name`, read back once; its file is removed."""
        path = self.paths.pop(name)
        x = np.fromfile(path, np.float32, count=min(rows, self.count[name]) * self.width[name])
        path.unlink()
        return x.reshape(-1, self.width[name])


def capture(model: nn.Module, targets: dict[str, nn.Module], prompts: list[list[int]], rows: int,
            done: Callable[[str, np.ndarray], None], lm_head: bool = False,
            progress: Callable[[int, int], None] | None = None) -> int:
    """Run `prompts` (token ids) through `model`; hand each target tensor's first `rows` real-token
    rows (R, K) float32 to `done(name, rows)`, once: as soon as it has them, else after the last
    batch. Returns how many prompts ran. `lm_head`: the LM head's input is a target (its logits are
    computed for every position, so batches are cut to LOGIT_BYTES of them)."""
    tokens = BATCH_TOKENS
    if lm_head:
        vocab = model.get_output_embeddings().weight.shape[0]
        tokens = max(1, min(tokens, LOGIT_BYTES // (4 * vocab)))
    batches = _batches(prompts, rows, tokens)
    real = {}  # the current batch's real-token mask, flattened

    with tempfile.TemporaryDirectory(prefix="phm-calib-") as folder:
        kept = _Rows(Path(folder), list(targets))

        def hook(name):
            def pre(module, args):
                if name not in kept.paths:  # already handed over
                    return
                x = args[0].detach().float()
                x = x.reshape(-1, x.shape[-1])
                if x.shape[0] == real["mask"].numel():
                    x = x[real["mask"]]
                if kept.add(name, x.numpy()) >= rows or real["last"]:
                    done(name, kept.take(name, rows))
            return pre

        handles = [m.register_forward_pre_hook(hook(name)) for name, m in targets.items()]
        try:
            for i, batch in enumerate(batches):
                ids, mask = _padded(batch)
                real.update(mask=mask.reshape(-1).bool(), last=i == len(batches) - 1)
                _forward(model, ids, mask, lm_head)
                if progress is not None:
                    progress(i + 1, len(batches))
        finally:
            for h in handles:
                h.remove()
        if kept.paths:
            raise ValueError(f"INT8 calibration: the model never ran the linear reading {next(iter(kept.paths))}")
    return sum(map(len, batches))
