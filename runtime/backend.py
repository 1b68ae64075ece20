"""The Backend protocol every runtime engine implements, and the helpers they share.

A backend owns one model's weights and its KV cache; the generation loop (generate.py) drives it
through three calls and knows nothing else about it:

    reset(max_tokens=None)                    forget the KV cache; max_tokens: the longest row the next
                                              generation reaches (prompt + new tokens), where known
    prefill(input_ids, attention_mask, images=None) -> logits of the last position, (batch, vocab)
    decode(next_ids, attention_mask)          -> logits, (batch, vocab); next_ids (batch, 1)

Token tensors are numpy int64; `attention_mask` always covers past + new tokens (left padding
for batch > 1). Position ids are derived from the mask here, once, for every backend. A backend with a
preallocated KV cache sizes it to `max_tokens` (the generation loop passes it), not to the exported
context: the cache's memory and the attention kernel's work follow the request.

A backend on a GPU also keeps `peak_device_mb` (device memory in use, sampled after each step
with `device_memory_used_mb`); the loop reports it next to the process's peak RSS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from phm.common import artifacts as artifacts_contract

__all__ = ["Backend", "BackendError", "device_memory_used_mb", "position_ids_from_mask", "read_manifest"]


class BackendError(RuntimeError):
    """A backend cannot run this request (wrong input kind, engine/plugin mismatch, …): one line."""


def read_manifest(artifacts: str | Path, verify: bool = False) -> dict:
    """manifest.json of an artifacts dir, validated (phm.common.artifacts), with every listed file at
    its recorded size (and with `verify` its sha256): the one reader every backend and phm-run use, so
    a bad artifacts dir is the same one-line BackendError wherever it is first read."""
    try:
        manifest = artifacts_contract.read_manifest(artifacts)
        artifacts_contract.verify_files(artifacts, manifest, hashes=verify)
    except artifacts_contract.ArtifactError as e:
        raise BackendError(str(e)) from None
    return manifest


@runtime_checkable
class Backend(Protocol):
    name: str

    def reset(self, max_tokens: int | None = None) -> None: ...

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray, images: dict | None = None) -> np.ndarray: ...

    def decode(self, next_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


def position_ids_from_mask(attention_mask: np.ndarray, new_tokens: int) -> np.ndarray:
    """Positions of the last `new_tokens` columns: cumulative count of real tokens − 1 (pads → 0).

    >>> position_ids_from_mask(np.array([[0, 1, 1, 1]]), 3).tolist()
    [[0, 1, 2]]
    """
    pos = np.cumsum(attention_mask, axis=-1) - 1
    pos = np.where(attention_mask == 0, 0, pos)
    return pos[:, -new_tokens:].astype(np.int64)


def device_memory_used_mb() -> float | None:
    """Memory in use on the current CUDA device (cudaMemGetInfo: the whole device, so allocations
    of TensorRT / ONNX Runtime outside torch count too); None where torch sees no GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2 ** 20
