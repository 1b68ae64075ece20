"""Weights that are streamed, never held: where each tensor of a checkpoint lives, lazy views of it
that the graph passes transpose, reshape and cast by bookkeeping alone, and the one external-data
file they are written into block by block.

    source = FileTensor.open(index, "model.layers.0.mlp.up_proj.weight")   # header only, no data read
    w = StreamedWeight(source, np.float16)          # a gs.Constant's values: shape and dtype, no data
    wt = w.transposed()                              # the MatMul layout, still no data
    DataFile(path).add([wt, …])                      # reads, casts, transposes and writes block by block

A StreamedWeight is an onnx-graphsurgeon `LazyValues`, so graphsurgeon carries it through every pass
and exports its `tensor` (a TensorProto that points into the data file) without loading it. Peak
memory of a write is one block (BLOCK_BYTES), whatever the model's size.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx_graphsurgeon.ir.tensor import LazyValues

__all__ = ["ArrayTensor", "BLOCK_BYTES", "DerivedWeight", "FileTensor", "SafetensorsIndex", "DataFile", "Shared",
           "StreamedWeight"]

BLOCK_BYTES = 64 << 20
ALIGN = 4096            # page-aligned offsets for tensors of ALIGN_FROM bytes and more: ONNX Runtime
ALIGN_FROM = 1 << 20    # can map those instead of copying them; smaller ones pack at SMALL_ALIGN
SMALL_ALIGN = 64
PENDING = "<pending>"   # a StreamedWeight's location until DataFile.add has placed it

# safetensors dtype names → numpy (bf16 has no numpy type: read as uint16 and widened to fp32)
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class SafetensorsIndex:
    """Every tensor of a checkpoint dir's *.safetensors files, from their headers alone."""

    def __init__(self, model_dir: str | Path):
        self.entries: dict[str, FileTensor] = {}
        for path in sorted(Path(model_dir).glob("*.safetensors")):
            with open(path, "rb") as f:
                try:
                    (size,) = struct.unpack("<Q", f.read(8))
                    header = json.loads(f.read(size))
                except (struct.error, ValueError, UnicodeDecodeError):
                    raise ValueError(f"cannot load {path}: not a safetensors file (unreadable header)") from None
            end = path.stat().st_size
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                dtype, shape, (lo, hi) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
                if dtype not in _ST_DTYPES:
                    raise ValueError(f"cannot load {path}: tensor {key} has dtype {dtype}, which the exporter cannot read")
                start = 8 + size + lo
                if start + (hi - lo) > end or hi - lo != int(np.prod(shape)) * np.dtype(_ST_DTYPES[dtype]).itemsize:
                    raise ValueError(f"cannot load {path}: tensor {key} lies outside the file or has the wrong size "
                                     "(truncated?)")
                self.entries[key] = FileTensor(str(path), key, start, dtype, shape)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __getitem__(self, key: str) -> "FileTensor":
        return self.entries[key]

    def keys(self):
        return self.entries.keys()


@dataclass(frozen=True)
class FileTensor:
    """One tensor in a safetensors file: read in element ranges with pread (nothing mapped or cached)."""

    path: str
    key: str
    start: int            # byte offset of its data in the file
    st_dtype: str
    shape: tuple

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype the values come back in (bf16 widens to fp32)."""
        return np.dtype(np.float32 if self.st_dtype == "BF16" else _ST_DTYPES[self.st_dtype])

    @property
    def ident(self) -> tuple:
        return ("file", self.path, self.key)

    def read(self, first: int, count: int) -> np.ndarray:
        raw_dtype = np.dtype(_ST_DTYPES[self.st_dtype])
        fd = os.open(self.path, os.O_RDONLY)
        try:
            buf = os.pread(fd, count * raw_dtype.itemsize, self.start + first * raw_dtype.itemsize)
        finally:
            os.close(fd)
        values = np.frombuffer(buf, dtype=raw_dtype)
        if self.st_dtype == "BF16":
            return (values.astype(np.uint32) << 16).view(np.float32)
        return values

    def load(self) -> np.ndarray:
        return self.read(0, int(np.prod(self.shape))).reshape(self.shape)


@dataclass(frozen=True, eq=False)
class ArrayTensor:
    """A tensor already in memory (a model that had to be loaded whole, e.g. to merge LoRA)."""

    array: np.ndarray

    @property
    def shape(self) -> tuple:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def ident(self) -> tuple:
        return ("array", id(self.array))

    def read(self, first: int, count: int) -> np.ndarray:
        return self.array.reshape(-1)[first:first + count]

    def load(self) -> np.ndarray:
        return self.array


class StreamedWeight(LazyValues):
    """A lazy view of a source tensor: the source's elements, optionally transposed as a 2-D (a, b)
    matrix, laid out in `shape` and cast to `dtype`. Transforms return new views; nothing is read
    until `load()` or `DataFile.add`."""

    def __init__(self, source, dtype=None, shape: tuple | None = None, transpose: tuple | None = None,
                 tied: bool = False):
        self.source = source
        self.shape = tuple(source.shape if shape is None else shape)
        self.dtype = np.dtype(source.dtype if dtype is None else dtype)
        self.transpose = transpose
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.location, self.offset = PENDING, 0
        self.tied = tied  # the model holds the source in several places (bind.py keeps its Transpose)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def ident(self) -> tuple:
        """Equal for views that write equal bytes: one copy in the data file."""
        return (self.source.ident, self.shape, self.dtype.str, self.transpose)

    def transposed(self) -> "StreamedWeight | None":
        """The 2-D transpose, or None for a layout this bookkeeping cannot express."""
        if len(self.shape) != 2:
            return None
        if self.transpose is None:
            return StreamedWeight(self.source, self.dtype, self.shape[::-1], transpose=self.shape, tied=self.tied)
        a, b = self.transpose
        if self.shape == (b, a):  # transposing back: the source's own order
            return StreamedWeight(self.source, self.dtype, (a, b), tied=self.tied)
        return None

    def reshaped(self, shape) -> "StreamedWeight":
        shape = tuple(int(d) for d in shape)
        if -1 in shape:
            known = int(np.prod([d for d in shape if d != -1]))
            shape = tuple(int(np.prod(self.shape)) // known if d == -1 else d for d in shape)
        if int(np.prod(shape)) != int(np.prod(self.shape)):
            raise ValueError(f"cannot reshape {self.shape} to {shape}")
        return StreamedWeight(self.source, self.dtype, shape, self.transpose, self.tied)

    def cast(self, dtype) -> "StreamedWeight":
        return StreamedWeight(self.source, dtype, self.shape, self.transpose, self.tied)

    def load(self) -> np.ndarray:
        """The values in memory (small graphs, quantization): what DataFile.add writes."""
        flat = self.source.read(0, int(np.prod(self.source.shape)))
        if self.transpose is not None:
            flat = flat.reshape(self.transpose).T
        return np.ascontiguousarray(flat.astype(self.dtype, copy=False)).reshape(self.shape)

    @property
    def tensor(self) -> onnx.TensorProto:
        """The initializer graphsurgeon exports: dims and type, data in the external file."""
        t = onnx.TensorProto()
        t.dims.extend(self.shape)
        t.data_type = onnx.helper.np_dtype_to_tensor_dtype(self.dtype)
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(self.offset)), ("length", str(self.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        return t

    def write(self, fd: int, offset: int) -> None:
        """Write the values at `offset` of the open file, one block at a time."""
        src_elems = int(np.prod(self.source.shape))
        if self.transpose is None:
            step = max(1, BLOCK_BYTES // max(self.source.dtype.itemsize, self.dtype.itemsize))
            for first in range(0, src_elems, step):
                block = self.source.read(first, min(step, src_elems - first)).astype(self.dtype, copy=False)
                os.pwrite(fd, block.tobytes(), offset + first * self.dtype.itemsize)
            return
        a, b = self.transpose  # output (b, a): source rows r0:r1 are output columns r0:r1 of each row
        size = self.dtype.itemsize
        rows = max(1, BLOCK_BYTES // (b * max(self.source.dtype.itemsize, size)))
        for r0 in range(0, a, rows):
            r1 = min(a, r0 + rows)
            block = self.source.read(r0 * b, (r1 - r0) * b).reshape(r1 - r0, b).T.astype(self.dtype)
            for i in range(b):
                os.pwrite(fd, block[i].tobytes(), offset + (i * a + r0) * size)

    def __repr__(self) -> str:  # graphsurgeon prints values in its logs: never load for that
        return f"StreamedWeight({self.shape}, {self.dtype}, of {self.source.ident[-1]})"


class Shared:
    """One computation with several outputs that are written as separate tensors (an INT8 weight and
    its scales): computed at the first read of any output and kept until each output was read once,
    so that a write computes it once and nothing stays held afterwards."""

    def __init__(self, fn: Callable[[], tuple]):
        self.fn, self.value, self.unread = fn, None, set()

    def part(self, i: int) -> np.ndarray:
        if i not in self.unread:  # a new round (first read, or an output read again)
            self.value = self.fn()
            self.unread = set(range(len(self.value)))
        out = self.value[i]
        self.unread.discard(i)
        if not self.unread:
            self.value = None
        return out


class DerivedWeight(StreamedWeight):
    """Values computed from other weights when they are written (quantized weights and their scales):
    one tensor's work at a time, nothing held between writes. `compute()` returns the array;
    `key` names the computation (equal keys: one copy in the data file)."""

    def __init__(self, compute: Callable[[], np.ndarray], shape: tuple, dtype, key: tuple):
        self.compute, self.key = compute, key
        self.shape, self.dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        self.transpose, self.tied = None, False
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.location, self.offset = PENDING, 0

    @property
    def ident(self) -> tuple:
        return ("derived", *self.key)

    def transposed(self):
        return None

    def reshaped(self, shape):
        raise ValueError("a derived weight is not reshaped")

    def cast(self, dtype):
        raise ValueError("a derived weight is not cast")

    def load(self) -> np.ndarray:
        value = np.ascontiguousarray(self.compute(), dtype=self.dtype)
        if value.shape != self.shape:
            raise ValueError(f"derived weight {self.key}: computed {value.shape}, declared {self.shape}")
        return value

    def write(self, fd: int, offset: int) -> None:
        flat = self.load().reshape(-1).view(np.uint8)
        for first in range(0, flat.size, BLOCK_BYTES):
            os.pwrite(fd, flat[first:first + BLOCK_BYTES].tobytes(), offset + first)

    def __repr__(self) -> str:
        return f"DerivedWeight({self.shape}, {self.dtype}, {self.key[0]})"


class DataFile:
    """The one external-data file of an export: views are appended (aligned), each distinct view
    (StreamedWeight.ident) once, whichever graph adds it; every added view points at its bytes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.placed: dict[tuple, int] = {}
        self.end = 0

    def new_bytes(self, weights: list[StreamedWeight]) -> int:
        """What `add(weights)` will write (views already in the file, or repeated, count once)."""
        return sum({w.ident: w.nbytes for w in weights if w.ident not in self.placed}.values())

    def add(self, weights: list[StreamedWeight], progress: Callable[[StreamedWeight], None] | None = None) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            for w in weights:
                if w.ident not in self.placed:
                    align = ALIGN if w.nbytes >= ALIGN_FROM else SMALL_ALIGN
                    start = -(-self.end // align) * align
                    self.placed[w.ident] = start
                    os.ftruncate(fd, start + w.nbytes)
                    w.write(fd, start)
                    self.end = start + w.nbytes
                    if progress is not None:
                        progress(w)
                w.location, w.offset = self.path.name, self.placed[w.ident]
            os.fsync(fd)
        finally:
            os.close(fd)
