"""Gradient checkpointing of the transformer layers: each layer's forward keeps only its inputs and
runs again in the backward (torch.utils.checkpoint, non-reentrant).

Hugging Face's `gradient_checkpointing_enable` recomputes only in train mode, and the trainer keeps
the model in eval mode (dropout off: the target is the teacher's exact function), so the layers
are wrapped here instead, on any architecture whose layers `parallel.layer_stacks` finds. Without
a gradient (the teacher's forward, evaluation) a layer runs as it is.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpoint_layers"]


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    # a KV cache would be appended to twice (forward, then the backward's replay): training needs none
    for name in ("past_key_values", "layer_past"):
        if kwargs.get(name) is not None:
            kwargs[name] = None
    if kwargs.get("use_cache"):
        kwargs["use_cache"] = False
    # no RNG to replay (eval mode) and none on meta tensors, which the memory plan runs this on
    return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)


def checkpoint_layers(model: nn.Module) -> int:
    """Recompute every transformer layer holding PHM layers in the backward; returns how many."""
    from .parallel import layer_stacks

    layers = layer_stacks(model)
    for layer in layers:
        if not isinstance(layer.forward, functools.partial):  # once per layer
            layer.forward = functools.partial(_checkpointed, layer.forward)
    return len(layers)
