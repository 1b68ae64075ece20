"""`ModelSource`: the model the exporter traces and where each of its tensors comes from.

Two ways in, one way out:
  - `from_files(model_dir)`: the model built without weights (trainer.empty_model) and every tensor
    found in the checkpoint's safetensors headers (weights.SafetensorsIndex). Nothing is read until a
    tensor is written into the artifacts or a reference forward needs it: the export's memory does not
    grow with the model.
  - `in_memory(model)`: a model that had to be loaded whole (its LoRA adapter merged); its tensors are
    the sources.

Either way the graph is traced on placeholders (`tracing`): each large tensor lies on anonymous
memory that is never written but for one tag element (a different value per tensor), so the trace
reads zeros from the kernel's shared zero page, records shapes and the op chain, and no weight is
materialised; tensors of
at most SMALL_BYTES (norms, biases, PHM bases, rotary tables) carry their real values, which the
graph's constant folding needs. `streaming(dtype)` runs the model on its real weights (the reference
outputs, INT8 calibration and its report), module by module from the files: an embedding reads only the rows it looks up, a linear
larger than one block multiplies block by block, every other module loads its own tensors on entry
and drops them on exit.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import mmap
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .weights import BLOCK_BYTES, ArrayTensor, SafetensorsIndex

log = logging.getLogger(__name__)

__all__ = ["ModelSource", "SMALL_BYTES"]

SMALL_BYTES = 1 << 20


def _slots(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, bool]]]:
    """id(tensor) → every (module, attribute, is_parameter) holding it (tied weights: several)."""
    slots: dict[int, list] = {}
    for module in model.modules():
        for attr, p in module._parameters.items():
            if p is not None:
                slots.setdefault(id(p), []).append((module, attr, True))
        for attr, b in module._buffers.items():
            if b is not None:
                slots.setdefault(id(b), []).append((module, attr, False))
    return slots


def _checkpoint_keys(model: nn.Module, index: SafetensorsIndex) -> dict[str, str]:
    """Model tensor name → checkpoint key: the same name, or the key transformers' own conversion
    mapping renames to it (e.g. a Qwen2.5-VL checkpoint's `model.layers.…` is the model's
    `model.language_model.layers.…`)."""
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    names |= {n for n, _ in model.named_buffers(remove_duplicate=False)}
    keys = {n: n for n in names if n in index}
    missing = names - set(keys)
    if missing:
        try:
            from transformers.conversion_mapping import get_model_conversion_mapping
            from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

            mapping = get_model_conversion_mapping(model)
            renames = [m for m in mapping if isinstance(m, WeightRenaming)]
            converters = [m for m in mapping if isinstance(m, WeightConverter)]
            for key in index.keys():
                name, _ = rename_source_key(key, renames, converters, getattr(model, "base_model_prefix", None),
                                            {n: None for n in names})
                if name in missing:
                    keys[name] = key
        except ImportError:  # an older transformers: names match or the weights cannot be mapped
            pass
    return keys


class ModelSource:
    """The model (its tensors swapped as each step needs) and the source of every tensor by id."""

    def __init__(self, model: nn.Module, sources: dict[int, object], in_memory: bool):
        self.model, self.in_memory = model, in_memory
        self.slots = _slots(model)
        self.sources = sources            # id(original tensor) → FileTensor | ArrayTensor
        self.current = {i: slot[0][0]._parameters[slot[0][1]] if slot[0][2] else slot[0][0]._buffers[slot[0][1]]
                        for i, slot in self.slots.items()}
        self.original = dict(self.current)  # id → the tensor object the model was built with
        self._released: dict[int, tuple] = {}  # id → (memory, tag) of each placeholder

    # --- building ---------------------------------------------------------------------------

    @classmethod
    def from_files(cls, model_dir: Path) -> "ModelSource":
        from phm.trainer import empty_model

        model = empty_model(model_dir)
        index = SafetensorsIndex(model_dir)
        keys = _checkpoint_keys(model, index)
        named = dict(model.named_parameters(remove_duplicate=False))
        named.update(model.named_buffers(remove_duplicate=False))
        sources, unresolved = {}, []
        for name, t in named.items():
            if id(t) in sources:
                continue
            key = keys.get(name) or next((keys[n] for n, u in named.items() if u is t and n in keys), None)
            if key is None:
                if t.is_meta:  # a parameter the checkpoint does not have
                    unresolved.append(name)
                continue        # a buffer the model computes itself (rotary tables, PHM bases)
            entry = index[key]
            if tuple(entry.shape) != tuple(t.shape):
                raise ValueError(f"{model_dir}: tensor {key} has shape {list(entry.shape)} in the checkpoint, "
                                 f"the config makes it {list(t.shape)}")
            sources[id(t)] = entry
        if unresolved:
            raise ValueError(f"{model_dir}: the checkpoint has no tensor for {unresolved[0]}"
                             + (f" (and {len(unresolved) - 1} more)" if len(unresolved) > 1 else ""))
        return cls(model, sources, in_memory=False)

    @classmethod
    def in_memory(cls, model: nn.Module) -> "ModelSource":
        model = model.float()
        sources = {id(t): ArrayTensor(t.detach().numpy())
                   for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
        return cls(model, sources, in_memory=True)

    # --- what the model holds ----------------------------------------------------------------

    def source_of(self, tensor: torch.Tensor):
        """The source of one of the model's tensors as it holds it now (None: computed, not stored)."""
        i = self._id_of(tensor)
        return None if i is None else self.sources.get(i)

    def is_tied(self, tensor: torch.Tensor) -> bool:
        """Does the model hold this tensor in more than one place (a tied embedding and LM head)?"""
        i = self._id_of(tensor)
        return i is not None and len(self.slots[i]) > 1

    def _set(self, i: int, tensor: torch.Tensor) -> None:
        for module, attr, is_param in self.slots[i]:
            if is_param:
                module._parameters[attr] = tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(
                    tensor, requires_grad=False)
                tensor = module._parameters[attr]
            else:
                module._buffers[attr] = tensor
        self.current[i] = tensor

    def _placeholder(self, i: int, dtype: torch.dtype, tag: int) -> torch.Tensor:
        src, orig = self.sources.get(i), self.original[i]
        if src is None:  # computed by the model: its own (small) values
            return orig.to(dtype) if orig.is_floating_point() else orig
        shape = tuple(src.shape)
        if int(np.prod(shape)) * 4 <= SMALL_BYTES:
            value = torch.from_numpy(np.array(src.load(), copy=True))
            return value.to(dtype) if value.is_floating_point() else value
        t, buf = _untouched(shape, dtype, tag)
        self._released[i] = (buf, _tagged(tag, dtype))
        return t

    def place(self, dtype: torch.dtype) -> None:
        """Every large tensor a placeholder, every small one its real value, at `dtype`."""
        self._released.clear()
        for tag, i in enumerate(self.slots):
            if self.original[i].is_floating_point():
                self._set(i, self._placeholder(i, dtype, tag))

    def restore(self) -> None:
        """In-memory models: their real fp32 tensors back (for the INT8 stage and the report)."""
        if self.in_memory:
            for i in self.slots:
                if i in self.sources:
                    self._set(i, torch.from_numpy(self.sources[i].array))
                elif self.original[i].is_floating_point():
                    self._set(i, self.original[i].float())

    @contextlib.contextmanager
    def tracing(self, dtype: torch.dtype):
        """Placeholders at `dtype` for the trace; afterwards fp32 (in memory: the real tensors)."""
        self.place(dtype)
        released = self._ids_released
        handles = [m.register_forward_hook(self._release) for m in self.model.modules()
                   if any(id(p) in released for p in m._parameters.values())]
        try:
            yield self.model
        finally:
            for h in handles:
                h.remove()
            if self.in_memory:
                self.restore()
            else:
                self.place(torch.float32)

    @property
    def _ids_released(self) -> set:
        return {id(self.current[i]) for i in self._released}

    def _release(self, module, args, out) -> None:
        """After a module ran in the trace: give back the pages its placeholders' reads mapped (the
        memory a forward over all of them would otherwise hold at once), then write the tags back."""
        mine = {id(p) for p in module._parameters.values()}
        for i, (buf, tag) in self._released.items():
            if id(self.current[i]) in mine:
                buf.madvise(mmap.MADV_DONTNEED)
                with torch.no_grad():
                    self.current[i].view(-1)[0] = tag

    @contextlib.contextmanager
    def streaming(self, dtype: torch.dtype = torch.float32):
        """The model runs on its real weights at `dtype`, read from the files module by module (an
        in-memory model: itself at fp32, a copy cast to `dtype` otherwise)."""
        if self.in_memory:
            yield self.model if dtype == torch.float32 else copy.deepcopy(self.model).to(dtype)
            return
        self.place(dtype)
        undo = []
        for module in self.model.modules():  # the placeholders: every large tensor the files hold
            large = [(attr, i) for attr, p in module._parameters.items() if p is not None
                     for i in [self._id_of(p)] if i in self._released]
            if large:
                undo.append(self._stream_module(module, large, dtype))
        try:
            yield self.model
        finally:
            for fn in undo:
                fn()
            if dtype != torch.float32:
                self.place(torch.float32)

    def _id_of(self, tensor) -> int | None:
        return next((i for i, t in self.current.items() if t is tensor), None)

    def _stream_module(self, module: nn.Module, large: list, dtype: torch.dtype):
        if isinstance(module, nn.Embedding) and [a for a, _ in large] == ["weight"]:
            src = self.sources[large[0][1]]
            module.forward = lambda ids, src=src: _gather_rows(src, ids).to(dtype)
            return lambda: module.__dict__.pop("forward", None)
        if isinstance(module, nn.Linear) and [a for a, _ in large] == ["weight"]:
            src = self.sources[large[0][1]]
            if int(np.prod(src.shape)) * 4 > BLOCK_BYTES:
                module.forward = lambda x, src=src, m=module: _blocked_linear(x, src, m.bias, dtype)
                return lambda: module.__dict__.pop("forward", None)
        np_dtype = torch.empty((), dtype=dtype).numpy().dtype

        def load(mod, args):
            for attr, i in large:
                mod._parameters[attr] = nn.Parameter(torch.from_numpy(
                    np.array(self.sources[i].load(), dtype=np_dtype)), requires_grad=False)

        def drop(mod, args, out):
            for attr, i in large:
                mod._parameters[attr] = self.current[i]

        handles = [module.register_forward_pre_hook(load), module.register_forward_hook(drop)]
        return lambda: [h.remove() for h in handles]


def _untouched(shape: tuple, dtype: torch.dtype, tag: int) -> tuple[torch.Tensor, mmap.mmap]:
    """A tensor of `shape` on fresh anonymous memory that is never written but for its first element
    (the tag), and that memory. Reading it maps zeros page by page, which `ModelSource._release`
    gives back after each module; the linears' kernels need no contiguous copy (a zero-stride view
    would make one per call)."""
    numel = int(np.prod(shape))
    itemsize = torch.empty((), dtype=dtype).element_size()
    buf = mmap.mmap(-1, max(1, numel * itemsize))
    t = torch.frombuffer(buf, dtype=dtype, count=numel).view(shape)
    t.view(-1)[0] = _tagged(tag, dtype)
    return t, buf


def _tagged(tag: int, dtype: torch.dtype) -> torch.Tensor:
    """A one-element tensor whose value no other placeholder has: the TorchScript exporter merges
    initializers of equal value (in eval mode), which would merge placeholders of equal shape. The
    values are the dtype's smallest normal numbers upward, so a trace on them neither overflows nor
    meets denormals."""
    bits = {torch.float16: (np.uint16, np.float16, 0x0400), torch.float32: (np.uint32, np.float32, 0x00800000),
            torch.bfloat16: (np.uint16, None, 0x0080)}
    if dtype not in bits:
        raise ValueError(f"cannot trace in {dtype}")
    ints, floats, first = bits[dtype]
    raw = torch.from_numpy(np.array([first + tag], dtype=ints).view(np.int16 if ints is np.uint16 else np.int32))
    return raw.view(dtype).reshape(())


def _gather_rows(src, ids: torch.Tensor) -> torch.Tensor:
    """Embedding lookup that reads only the looked-up rows from the file."""
    dim = int(np.prod(src.shape[1:]))
    uniq, inverse = torch.unique(ids, return_inverse=True)
    rows = np.stack([np.asarray(src.read(int(r) * dim, dim), dtype=np.float32) for r in uniq.tolist()])
    return torch.from_numpy(rows)[inverse]


def _blocked_linear(x: torch.Tensor, src, bias, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """y = x Wᵀ (+ b) at `dtype` with W read BLOCK_BYTES of rows at a time (an LM head larger than a block)."""
    out_features, in_features = src.shape
    rows = max(1, BLOCK_BYTES // (4 * in_features))
    parts = []
    for r0 in range(0, out_features, rows):
        r1 = min(out_features, r0 + rows)
        w = torch.from_numpy(np.array(src.read(r0 * in_features, (r1 - r0) * in_features),
                                        dtype=np.float32).reshape(r1 - r0, in_features))
        parts.append(F.linear(x.to(dtype), w.to(dtype)))
    y = torch.cat(parts, dim=-1)
    return y if bias is None else y + bias.to(dtype)
