"""`StreamingTokenBatches`: text training data read as the run goes (`--stream`), for corpora too large to tokenize up front.

The default readers (data.py, sources.py) read every sample and tokenize every text before the
first step. With `data.stream` a text corpus in local `.parquet`, `.arrow` or `.jsonl` files (one
file or a folder of them) is read through Hugging Face datasets' streaming reader instead
(`load_dataset(..., streaming=True)`): rows come off the files when a batch needs them, each batch
is tokenized when it is built, and memory holds a shuffle buffer of rows, not the corpus.

The contract is TokenBatches' (`batch(step)` a pure function of (files, seed, step), `__len__`):
- order: pass e over the files (an epoch) reads the files in a seeded order and shuffles their rows
  through a buffer of `SHUFFLE_BUFFER` rows (a row leaves from a random slot as the next one comes
  in; `shuffled`), both seeded with (seed, e); a batch is the next `batch_size` sequences of it
  (texts cut at `max_length`, or with `pack` consecutive `max_length` windows of the rows' tokens);
  at the end of a pass the next one begins, so a run is given in steps, not epochs;
- held-out rows: the hash split of `split_holdout`, decided row by row; evaluation reads the first
  `limit` held-out rows in file order (`held_out_texts`);
- `batch(step)` reads on from the last batch it built. A step behind that (the init stages read the
  first batches before the KD loop starts again at 0; `--resume`) reopens the reader and skips
  forward, re-reading and re-tokenizing the rows before it (what keeps packed windows aligned);
- `len()`: batches in one pass, estimated from the files' row counts (parquet metadata, other
  files counted once as a stream) less the held-out fraction; used for log lines and as the cap of
  the init stages' batch counts, never for the order.
Text rows only (a `text` column or field); image and conversation data use the default readers.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

from .data import _pad_id, chat_turns, is_held_out, pad_batch

__all__ = ["STREAM_SUFFIXES", "StreamingTokenBatches", "held_out_texts", "shuffled"]

STREAM_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json"}
SHUFFLE_BUFFER = 10_000  # rows in the shuffle buffer: the memory a stream holds


def _files(path: Path) -> tuple[list[Path], str]:
    """The files of a streamed corpus (a file, or a folder's files of one kind) and datasets' builder."""
    if not path.exists():
        raise ValueError(f"data {path} does not exist")
    files = sorted(p for p in path.iterdir() if p.suffix in STREAM_SUFFIXES) if path.is_dir() else [path]
    kinds = {STREAM_SUFFIXES.get(p.suffix) for p in files}
    if not files or None in kinds:
        raise ValueError(f"--stream reads {', '.join(STREAM_SUFFIXES)} files (or a folder of them); {path} is not one")
    if len(kinds) > 1:
        raise ValueError(f"--stream: {path} mixes file kinds ({', '.join(sorted(kinds))}); give one kind")
    return files, kinds.pop()


def _rows(files: list[Path], kind: str) -> int:
    """Rows in the files, without loading them: parquet's footer, else one streamed count."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if kind == "json":
        count = 0
        for f in files:
            with f.open("rb") as fh:
                count += sum(1 for line in fh if line.strip())
        return count
    import pyarrow as pa

    count = 0
    for f in files:
        with pa.memory_map(str(f)) as source:
            count += sum(batch.num_rows for batch in pa.ipc.open_stream(source))
    return count


def _dataset(files: list[Path], kind: str):
    try:
        import datasets
    except ImportError:
        raise ValueError("--stream needs the `datasets` package (pip install datasets)") from None
    datasets.disable_progress_bars()
    return datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train", streaming=True)


def _texts(rows: Iterator[dict], where: str) -> Iterator[str]:
    for i, row in enumerate(rows):
        if "text" not in row:
            raise ValueError(f"{where}: --stream reads rows with a \"text\" field; row {i} has "
                             f"{', '.join(row) or 'none'}")
        if isinstance(row["text"], str) and row["text"].strip():
            yield row["text"]


def shuffled(items: Iterable, buffer: int, rng: random.Random) -> Iterator:
    """`items` in a buffered random order: once `buffer` items are held, each new one takes the slot
    of a randomly chosen held one, which is yielded; the rest come out shuffled at the end. (Hugging
    Face datasets' own buffered shuffle ends each pass with a 5 s sleep in the version pinned here.)"""
    held: list = []
    for item in items:
        if len(held) < buffer:
            held.append(item)
            continue
        slot = rng.randrange(buffer)
        yield held[slot]
        held[slot] = item
    rng.shuffle(held)
    yield from held


def held_out_texts(path: str | Path, fraction: float, limit: int) -> list[str]:
    """The first `limit` (0: all) held-out texts of the files in file order: the rows of the hash
    split that training skips."""
    files, kind = _files(Path(path))
    held = (t for t in _texts(iter(_dataset(files, kind)), str(path)) if is_held_out(t, fraction))
    return list(itertools.islice(held, limit or None))


class StreamingTokenBatches:
    """Token batches of a streamed text corpus (module doc): the `batch(step)` contract of TokenBatches."""

    def __init__(self, path: str | Path, tokenizer, batch_size: int, max_length: int, seed: int = 0,
                 holdout: float = 0.0, pack: bool = False, chat_template: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if pack and max_length < 2:
            raise ValueError(f"packing needs windows of >= 2 tokens, got {max_length}")
        self.path = Path(path)
        self.files, self.kind = _files(self.path)
        self.tokenizer, self.batch_size, self.max_length, self.seed = tokenizer, batch_size, max_length, seed
        self.holdout, self.pack, self.chat_template = holdout, pack, chat_template
        self.rows = _rows(self.files, self.kind)
        if not self.rows:
            raise ValueError(f"data {self.path} is empty")
        self.pad_id = _pad_id(tokenizer)
        self._reader: Iterator[list[int]] | None = None
        self._next = 0  # the step whose batch the reader builds next

    def __len__(self) -> int:
        return max(1, int(self.rows * (1 - self.holdout)) // self.batch_size)

    def _pass(self, epoch: int) -> Iterator[str]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        files = rng.sample(self.files, len(self.files))
        rows = itertools.chain.from_iterable(_dataset([f], self.kind) for f in files)
        texts = (t for t in _texts(shuffled(rows, SHUFFLE_BUFFER, rng), str(self.path))
                 if not is_held_out(t, self.holdout))
        if self.chat_template:
            texts = (chat_turns(self.tokenizer, [t])[0] for t in texts)
        return texts

    def _sequences(self) -> Iterator[list[int]]:
        """Token sequences in batch order, pass after pass."""
        buffer: list[int] = []
        for epoch in itertools.count():
            found = False
            for text in self._pass(epoch):
                found = True
                if not self.pack:
                    ids = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
                    if ids:
                        yield ids
                    continue
                buffer += self.tokenizer(text + "\n", add_special_tokens=False)["input_ids"]
                while len(buffer) >= self.max_length:
                    yield buffer[:self.max_length]
                    buffer = buffer[self.max_length:]
            if not found:
                raise ValueError(f"data {self.path}: no training text (every row is empty or held out)")

    def batch(self, step: int) -> dict:
        if self._reader is None or step < self._next:
            self._reader, self._next = self._sequences(), 0
        while self._next < step:  # skip whole batches to reach the step
            for _ in itertools.islice(self._reader, self.batch_size):
                pass
            self._next += 1
        seqs = list(itertools.islice(self._reader, self.batch_size))
        self._next += 1
        return pad_batch(seqs, self.pad_id)
