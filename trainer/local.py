"""Layer-wise local distillation: fit each transformer layer's PHM cores on cached activations.

Before the global KD loop (distill.py) the cores can be trained one layer at a time, which is far
cheaper per useful gradient than end-to-end KD: no teacher forward, no attention over the whole
stack, no backward through the other layers. For every layer stack holding PHM wrappers (e.g.
`encoder.layer`, `model.layers`, a vision tower's `blocks`), in forward order:

    h_s, h_t = the student's / teacher's input of the stack's first PHM layer (one cut-short forward each)
    for each layer l from there to the stack's last PHM layer:
        t   = layer_l(h_t) in teacher mode (λ = 0)                  the target
        fit layer l's PHM cores/biases (λ = 1) so that layer_l(h_s) ≈ t   (per-token ‖·‖²/‖t‖², Adam)
        h_s = layer_l(h_s) with the fitted cores;  h_t = t

The student's inputs carry the errors of the layers fitted before, so each layer learns to correct
its predecessors' drift (sequential, error-correcting fit) instead of matching the teacher on
inputs it will never see. Layers are called with the keyword arguments captured from the model's
own forward (attention mask, rotary tables, …), so nothing architecture-specific lives here.
Measured effect: docs/trainer.md ("Local stage").
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from .inject import phm_wrappers, teacher_mode
from .losses import hidden_kd_loss
from .schedule import lr_factor

__all__ = ["local_distill", "phm_layer_stacks"]

log = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised by the capture hook: the rest of the forward is not needed."""


def phm_layer_stacks(model: nn.Module) -> list[tuple[str, list[int]]]:
    """(ModuleList path, sorted indices of its layers holding PHM wrappers), in forward order."""
    stacks: dict[str, set[int]] = {}
    for name, _ in phm_wrappers(model):
        # the innermost "<path>.<index>." whose <path> is a ModuleList is the wrapper's layer
        for m in reversed(list(re.finditer(r"\.(\d+)(?=\.)", name))):
            path = name[:m.start()]
            if isinstance(model.get_submodule(path), nn.ModuleList):
                stacks.setdefault(path, set()).add(int(m.group(1)))
                break
    order = [name for name, _ in model.named_modules()]  # registration order ≈ forward order
    return [(p, sorted(stacks[p])) for p in sorted(stacks, key=lambda p: order.index(p))]


LOCAL_INPUTS = ("student", "teacher")


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def _capture(model: nn.Module, layer: nn.Module, batches: list[dict], keep=lambda t: t) -> list[tuple[tuple, dict]]:
    """(args, kwargs) the model passes to `layer`, per batch (the hidden states through `keep`: host
    memory for a host-cached stage); the forward stops there."""
    from transformers.cache_utils import Cache  # here: importing the trainer need not load transformers

    seen: list = []

    def hook(_module, args, kwargs):
        # a cache object among the layer inputs would take every replayed call's K/V (whether the model's
        # forward made one depends on its config and signature): the layer must run without it
        args = tuple(None if isinstance(a, Cache) else a for a in args)   # GPT-2 passes it positionally
        kwargs = {k: (None if isinstance(v, Cache) else v) for k, v in kwargs.items()}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        seen.append(((keep(args[0]), *args[1:]), kwargs))
        raise _Stop

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(**batch)
            except _Stop:
                pass
            else:
                raise ValueError("local distillation: the model's forward never reached its PHM layer stack")
    finally:
        handle.remove()
    return seen


class _OnDevice:
    """A list of cached tensors read one at a time on `device` (host-cached local stage)."""

    def __init__(self, items: list, device):
        self.items, self.device = items, device

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.items[i].to(self.device)


def _fit_layer(params: list, run, targets: list, masks: list, epochs: int, lr: float, seed: int, where: str,
               bar) -> None:
    """Adam on one layer's cores: `epochs` passes over the cached batches in a seeded order, the
    learning rate cosine to 10 % without warm-up (the cores start fitted)."""
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    steps, step = epochs * len(targets), 0
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for i in torch.randperm(len(targets), generator=gen).tolist():
            for g in opt.param_groups:
                g["lr"] = lr * lr_factor(step, steps, 0)
            loss = hidden_kd_loss(run(i), targets[i], masks[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if not torch.isfinite(loss):  # before the update: the cores stay as they were
                raise ValueError(f"local stage stopped at layer {where}: non-finite loss "
                                 f"({loss.item():.4g}); lower the local learning rate")
            opt.step()
            step += 1
            if bar is not None:
                bar.update(1)
    for p in params:
        p.requires_grad_(False)


LOCAL_CACHES = ("auto", "device", "host")


def _cache_on_host(model: nn.Module, stack: str, batches: list[dict], where: str) -> bool:
    """Whether the local stage keeps a layer stack's cached activations in host memory: asked, or
    `auto` on a GPU whose free memory is less than twice what the caches need (student inputs,
    teacher inputs and targets of every batch at the stack's width)."""
    if where != "auto":
        return where == "host"
    device = next(model.parameters()).device
    if device.type != "cuda":
        return False
    first = next(w for name, w in phm_wrappers(model) if name.startswith(stack + "."))
    width = first.phm.in_features  # the first wrapper of a layer reads its input (gate/up/fc1)
    tokens = sum(b["input_ids"].numel() for b in batches)  # (image tokens of a vision stack: a lower bound)
    need = 3 * tokens * width * next(model.parameters()).element_size()
    return need > torch.cuda.mem_get_info(device)[0] / 2


def local_distill(model: nn.Module, batches: list[dict], epochs: int, lr: float, seed: int = 0,
                  progress: bool = False, inputs: str = "student", cache: str = "auto") -> list[dict]:
    """Fit every PHM layer's cores on cached activations (module docstring); returns per-layer logs.

    `batches`: model keyword dicts (on the model's device). λ of every wrapper is 1 afterwards
    (the fitted student); the dense weights are untouched. `inputs`: "student" feeds each layer the
    output of the already fitted PHM layers below it (what the abrupt swap runs), "teacher" the dense
    model's (each layer fitted alone: what a progressive fade starts from, with the layers below
    still mostly dense). `cache`: where the cached layer inputs and targets live between uses,
    "device", "host" (each batch's moved to the device when used: the stage then needs one batch of
    device memory, not all of them) or "auto" (host when a GPU lacks the room).
    """
    if inputs not in LOCAL_INPUTS:
        raise ValueError(f"local inputs must be one of {LOCAL_INPUTS}, got {inputs!r}")
    if cache not in LOCAL_CACHES:
        raise ValueError(f"local cache must be one of {LOCAL_CACHES}, got {cache!r}")
    stacks = phm_layer_stacks(model)
    if not stacks or epochs <= 0:
        return []
    wrappers = phm_wrappers(model)
    for p in model.parameters():
        p.requires_grad_(False)
    total = sum(epochs * len(batches) * (idx[-1] - idx[0] + 1) for _, idx in stacks)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="local", unit="step", dynamic_ncols=True)
    logs = []
    for path, indices in stacks:
        host = _cache_on_host(model, path, batches, cache)
        if host:
            log.info("local stage %s: cached activations in host memory, one batch at a time on the device", path)
        keep = (lambda t: t.cpu()) if host else (lambda t: t)
        layers = model.get_submodule(path)
        first = layers[indices[0]]
        for _, w in wrappers:
            w.lam = 1.0
        student = _capture(model, first, batches, keep)
        with teacher_mode(model):
            teacher = _capture(model, first, batches, keep)
        h_s = [args[0] for args, _ in student]
        h_t = [args[0] for args, _ in teacher]
        rest = [(args[1:], kwargs) for args, kwargs in student]
        # padding mask where it matches the hidden states' token axis (VLM image tokens extend it)
        masks = [m if m is not None and m.shape == h.shape[:2] else None
                 for m, h in zip((b.get("attention_mask") for b in batches), h_t)]
        for index in range(indices[0], indices[-1] + 1):
            layer = layers[index]
            params = [p for name, p in layer.named_parameters() if ".phm." in name]

            h_in = h_s if inputs == "student" else h_t

            device = next(layer.parameters()).device

            def run(i, _layer=layer, _h=h_in, _device=device):
                args, kwargs = rest[i]
                return _first(_layer(_h[i].to(_device), *args, **kwargs))

            with torch.no_grad(), teacher_mode(model):
                targets = [keep(_first(layer(h_t[i].to(device), *rest[i][0], **rest[i][1])))
                           for i in range(len(batches))]
            loss_sum = 0.0
            if params:
                _fit_layer(params, run, _OnDevice(targets, device), masks, epochs, lr, seed * 1000 + index,
                           f"{path}.{index}", bar)
            elif bar is not None:
                bar.update(epochs * len(batches))
            with torch.no_grad():
                outs = [keep(run(i)) for i in range(len(batches))]
                for i, out in enumerate(outs):
                    loss_sum += hidden_kd_loss(out.to(device), targets[i].to(device), masks[i]).item()
            h_s, h_t = outs, targets
            entry = {"stage": "local", "layer": f"{path}.{index}", "loss": round(loss_sum / len(batches), 6)}
            logs.append(entry)
            log.info("local %s.%d: layer output error %.4f", path, index, entry["loss"])
    if bar is not None:
        bar.close()
    return logs
