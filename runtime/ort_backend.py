"""ONNX Runtime backend: drives an exported decoder graph (prefill and decode in one graph).

I/O contract (written by phm.export, read here from the session, never guessed from file names):
  inputs   input_ids (batch, seq) int64, attention_mask (batch, past+seq) int64,
           position_ids (batch, seq) int64 [optional],
           past_key_values.{i}.key / .value (batch, kv_heads, past, head_dim)
  outputs  logits (batch, seq, vocab), present.{i}.key / .value (batch, kv_heads, past+seq, head_dim)

The KV cache stays in OrtValues between steps (`run_with_ort_values`), so decode does not copy
the cache through numpy; only the last position's logits come back as an array.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .backend import BackendError, position_ids_from_mask

__all__ = ["OrtBackend"]

_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OrtBackend:
    name = "ort"

    def __init__(self, onnx_path: str | Path, providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise BackendError(f"ONNX model {onnx_path} does not exist")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        available = ort.get_available_providers()
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
        except Exception as e:  # ORT raises its own exception types; report one line
            raise BackendError(f"ONNX Runtime cannot load {onnx_path}: {str(e).splitlines()[0]}") from None
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        if "input_ids" not in self.inputs or "logits" not in self.output_names:
            raise BackendError(f"{onnx_path.name} is not a decoder graph (needs input_ids -> logits)")
        self.past_names = sorted((n for n in self.inputs if _PAST.fullmatch(n)),
                                 key=lambda n: (int(_PAST.fullmatch(n)[1]), _PAST.fullmatch(n)[2]))
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        missing = [n for n in self.present_names if n not in self.output_names]
        if missing:
            raise BackendError(f"{onnx_path.name}: past inputs without matching outputs {missing[:2]}")
        self.providers = self.session.get_providers()
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self._ort = ort
        self.cache = None

    def reset(self) -> None:
        self.cache = None

    def _empty_past(self, batch: int) -> dict:
        feeds = {}
        for name in self.past_names:
            meta = self.inputs[name]
            _, heads, _, head_dim = meta.shape
            arr = np.zeros((batch, heads, 0, head_dim), dtype=_ORT_DTYPES[meta.type])
            feeds[name] = self._ort.OrtValue.ortvalue_from_numpy(arr)
        return feeds

    def _step(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        ov = self._ort.OrtValue.ortvalue_from_numpy
        feeds = {"input_ids": ov(np.ascontiguousarray(ids, dtype=np.int64)),
                 "attention_mask": ov(np.ascontiguousarray(mask, dtype=np.int64))}
        if "position_ids" in self.inputs:
            feeds["position_ids"] = ov(position_ids_from_mask(mask, ids.shape[1]))
        feeds.update(self.cache if self.cache is not None else self._empty_past(ids.shape[0]))
        outs = self.session.run_with_ort_values(["logits", *self.present_names], feeds)
        self.cache = dict(zip(self.past_names, outs[1:]))
        logits = outs[0].numpy()
        return logits[:, -1].astype(np.float32)

    def prefill(self, input_ids, attention_mask, images=None):
        if images:
            raise BackendError("this artifact is a text-only decoder: it takes no image")
        return self._step(input_ids, attention_mask)

    def decode(self, next_ids, attention_mask):
        return self._step(next_ids, attention_mask)
