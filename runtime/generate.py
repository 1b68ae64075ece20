"""The generation loop: prefill once, then decode token by token, over any Backend.

    result = generate(backend, input_ids, GenerationConfig(max_new_tokens=32))
    result.tokens        # (batch, n_new) int64, pad_id after a row stopped
    result.timings       # prefill ms, decode tokens/s, peak RSS (and device memory on a GPU backend)
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .backend import Backend
from .sampling import SamplingConfig, sample_next

__all__ = ["GenerationConfig", "GenerationResult", "Timings", "generate", "stop_ids"]


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32
    stop_ids: tuple = ()            # generation of a row ends after it emits one of these
    pad_id: int = 0                 # written after a row has stopped
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}")
        self.stop_ids = tuple(int(i) for i in self.stop_ids)


@dataclass
class Timings:
    prefill_ms: float
    prompt_tokens: int
    decode_ms: float
    decode_tokens: int
    peak_rss_mb: float
    peak_device_mb: float | None = None   # GPU backends: device memory in use, peak over the steps
    startup_ms: float | None = None       # phm-run: command start (artifacts dir) to the first prefill

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / (self.decode_ms / 1e3) if self.decode_ms > 0 else float("nan")

    def line(self) -> str:
        device = "" if self.peak_device_mb is None else f", peak device memory {self.peak_device_mb:.0f} MB"
        start = "" if self.startup_ms is None else f"startup {self.startup_ms / 1e3:.2f} s, "
        return (f"{start}prefill {self.prefill_ms:.1f} ms ({self.prompt_tokens} tok), decode "
                f"{self.decode_tokens_per_s:.1f} tok/s ({self.decode_tokens} tok), peak RSS {self.peak_rss_mb:.0f} MB"
                f"{device}")

    def to_dict(self) -> dict:
        return {"prefill_ms": self.prefill_ms, "prompt_tokens": self.prompt_tokens, "decode_ms": self.decode_ms,
                "decode_tokens": self.decode_tokens, "decode_tokens_per_s": self.decode_tokens_per_s,
                "peak_rss_mb": self.peak_rss_mb, "peak_device_mb": self.peak_device_mb, "startup_ms": self.startup_ms}


@dataclass
class GenerationResult:
    tokens: np.ndarray              # (batch, n_new)
    timings: Timings


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def generate(backend: Backend, input_ids: np.ndarray, cfg: GenerationConfig, attention_mask: np.ndarray | None = None,
             images: dict | None = None, on_token: Callable[[np.ndarray], None] | None = None,
             started: float | None = None) -> GenerationResult:
    """Prompt (batch, seq) -> new tokens. Decode timing covers every decode step (all but the first token).

    `on_token(ids)` gets each step's (batch,) tokens as soon as they are chosen (streaming output);
    `started` (a time.perf_counter() value) is when the caller began loading: startup_ms runs to the prefill."""
    input_ids = np.asarray(input_ids, dtype=np.int64)
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (batch, seq) with seq ≥ 1, got shape {input_ids.shape}")
    mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
    rng = np.random.default_rng(cfg.sampling.seed)
    backend.reset(max_tokens=input_ids.shape[1] + cfg.max_new_tokens)
    t0 = time.perf_counter()
    startup_ms = None if started is None else (t0 - started) * 1e3
    logits = backend.prefill(input_ids, mask, images)
    prefill_ms = (time.perf_counter() - t0) * 1e3
    batch = input_ids.shape[0]
    done = np.zeros(batch, dtype=bool)
    stops = np.array(cfg.stop_ids, dtype=np.int64)
    out = []
    t1 = time.perf_counter()
    for step in range(cfg.max_new_tokens):
        nxt = np.where(done, cfg.pad_id, sample_next(logits, cfg.sampling, rng))
        out.append(nxt)
        if on_token is not None:
            on_token(nxt)
        done |= np.isin(nxt, stops)
        if done.all() or step == cfg.max_new_tokens - 1:
            break
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        logits = backend.decode(nxt[:, None], mask)
    decode_ms = (time.perf_counter() - t1) * 1e3
    timings = Timings(prefill_ms, int(input_ids.size), decode_ms, max(len(out) - 1, 0) * batch, _peak_rss_mb(),
                      getattr(backend, "peak_device_mb", None), startup_ms)
    return GenerationResult(np.stack(out, axis=1), timings)


def stop_ids(tokenizer, hf_dir: str | Path) -> tuple:
    """EOS of the tokenizer (None: none) and of hf_dir's generation_config.json (chat models end
    turns with another token)."""
    ids = {tokenizer.eos_token_id} if tokenizer is not None and tokenizer.eos_token_id is not None else set()
    gen = Path(hf_dir) / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids |= set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    return tuple(sorted(ids))
