"""PyTorch backend over a Hugging Face model (PHM or dense): the reference the engines are
compared with, and a runtime of its own where torch runs (GPU or CPU)."""

from __future__ import annotations

import numpy as np
import torch

from .backend import BackendError, position_ids_from_mask
from .vlm import mrope_step_positions

__all__ = ["TorchBackend"]


class TorchBackend:
    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.device = device
        self.cache = None
        from phm.export.graphs import MROPE_TYPES  # here: the exporter's modules load only with this backend

        # Qwen2(.5)-VL: M-RoPE positions computed here as the ORT backend computes them (vlm.py), so
        # both run the same positions; transformers' own path wants processor outputs (mm_token_type_ids)
        self.mrope = getattr(model.config, "model_type", None) in MROPE_TYPES
        self.rope_delta = None

    def reset(self, max_tokens: int | None = None) -> None:  # transformers' cache grows as it goes
        self.cache = None
        self.rope_delta = None

    def _step(self, ids: np.ndarray, mask: np.ndarray, extra: dict) -> np.ndarray:
        from transformers import DynamicCache

        if self.mrope:
            grid = extra.get("image_grid_thw")
            cfg = self.model.config
            pos, self.rope_delta = mrope_step_positions(
                ids, mask, self.rope_delta if self.cache is not None else None,
                None if grid is None else tuple(int(v) for v in np.asarray(grid.cpu()).reshape(-1, 3)[0]),
                cfg.image_token_id, cfg.vision_config.spatial_merge_size)
        else:
            pos = position_ids_from_mask(mask, ids.shape[1])
        if self.cache is None:
            self.cache = DynamicCache(config=self.model.config)
        kwargs = dict(input_ids=torch.from_numpy(ids).to(self.device),
                      attention_mask=torch.from_numpy(mask).to(self.device),
                      position_ids=torch.from_numpy(pos).to(self.device),
                      past_key_values=self.cache, use_cache=True, **extra)
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
