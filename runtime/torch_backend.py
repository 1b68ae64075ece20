"""PyTorch backend over a Hugging Face model (PHM or dense): the reference the engines are
compared with, and a runtime of its own where torch runs (GPU or CPU)."""

from __future__ import annotations

import numpy as np
import torch

from .backend import BackendError, position_ids_from_mask

__all__ = ["TorchBackend"]


class TorchBackend:
    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.device = device
        self.cache = None

    def reset(self) -> None:
        self.cache = None

    def _step(self, ids: np.ndarray, mask: np.ndarray, extra: dict) -> np.ndarray:
        from transformers import DynamicCache

        if self.cache is None:
            self.cache = DynamicCache(config=self.model.config)
        kwargs = dict(input_ids=torch.from_numpy(ids).to(self.device),
                      attention_mask=torch.from_numpy(mask).to(self.device),
                      past_key_values=self.cache, use_cache=True, **extra)
        if not extra:  # VLMs compute their own (3-row mrope) positions from the cache
            kwargs["position_ids"] = torch.from_numpy(position_ids_from_mask(mask, ids.shape[1])).to(self.device)
        with torch.inference_mode():
            out = self.model(**kwargs)
        self.cache = out.past_key_values
        return out.logits[:, -1].float().cpu().numpy()

    def prefill(self, input_ids, attention_mask, images=None):
        if images and not hasattr(self.model.config, "vision_config"):
            raise BackendError("an image was given but this model has no vision tower (text-only)")
        extra = {k: torch.as_tensor(v).to(self.device) for k, v in (images or {}).items()}
        return self._step(input_ids, attention_mask, extra)

    def decode(self, next_ids, attention_mask):
        return self._step(next_ids, attention_mask, {})
