"""Next-token choice from logits: greedy, or temperature + top-p (nucleus) with a seeded RNG."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SamplingConfig", "sample_next"]


@dataclass
class SamplingConfig:
    temperature: float = 0.0   # 0 → greedy (argmax); > 0 → sample from softmax(logits / T)
    top_p: float = 1.0         # keep the smallest set of tokens whose probability reaches top_p
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def sample_next(logits: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator) -> np.ndarray:
    """logits (batch, vocab) -> token ids (batch,) int64.

    >>> sample_next(np.array([[0.1, 2.0, -1.0]]), SamplingConfig(), np.random.default_rng(0)).tolist()
    [1]
    """
    if cfg.temperature == 0:  # float32 argmax: the same index, without a float64 copy per step
        return logits.argmax(-1).astype(np.int64)
    logits = logits.astype(np.float64)
    z = logits / cfg.temperature
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.empty(probs.shape[0], dtype=np.int64)
    for row, p in enumerate(probs):
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, cfg.top_p) + 1)]  # always ≥ 1 token
        q = p[keep] / p[keep].sum()
        out[row] = keep[rng.choice(len(keep), p=q)]
    return out
