"""Training data: text JSONL/TXT, image+caption folders, the bundled chatterbot corpus, text sampled
from the teacher (data-free), and deterministic token batches.

Accepted `--data PATH` forms (same conventions as the exporter's calibration data):
- a JSONL file: one object per line with a "text" string and optionally "image" (path relative
  to the file) and "prompt" (the user turn that goes with the image, e.g. a VQA question; the
  text is then the answer);
- a TXT file: one sample per non-empty line;
- a folder: every *.jsonl / *.txt in it, plus every image (png/jpg/jpeg/bmp/webp) paired with a
  same-named .txt caption;
- `chatterbot`: the English part of the chatterbot-corpus package (BSD-3-Clause), one sample per
  distinct utterance;
- LLaVA conversation records (JSONL lines or a .json list with "conversations"), Hugging Face
  `datasets` files (.parquet / .arrow, or a folder of them) and Flickr8k folders: sources.py.
Empty or unreadable data is a ValueError with one clear line.

`TokenBatches.packed` packs texts into full windows of `max_length` tokens (causal LMs; `--pack`).
`TokenBatches.batch(step)` is a pure function of (seed, step): epoch e shuffles with seed + e, so
a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .sources import conversation_record, from_conversations, from_flickr8k, from_hf_files, is_flickr8k, json_records

__all__ = ["ANSWER_MASK", "Sample", "TokenBatches", "chat_turns", "chatterbot_texts", "model_inputs", "read_samples",
           "sample_key", "sample_teacher_texts", "split_holdout", "to_device", "token_windows", "is_held_out",
           "pad_batch"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Held-out image+text batches carry, beside the model's inputs, which tokens belong to the assistant
# turns (the caption or answer): evaluation scores those, not the prompt and image tokens.
ANSWER_MASK = "answer_mask"


@dataclass(frozen=True)
class Sample:
    text: str
    image: Path | None = None
    prompt: str | None = None     # user turn for an image sample (default: ImageTextBatches' caption prompt)
    turns: tuple = ()             # later (role, text) turns of a conversation (sources.py)


def _from_jsonl(path: Path) -> list[Sample]:
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{lineno}: not valid JSON") from None
        if conversation_record(obj):
            out.append(from_conversations(obj, path.parent, f"{path}:{lineno}"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise ValueError(f"{path}:{lineno}: each line needs a \"text\" string (or LLaVA \"conversations\")")
        image, prompt = obj.get("image"), obj.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(f"{path}:{lineno}: \"prompt\" must be a string")
        if image is not None:
            image = (path.parent / image).resolve()
            if not image.is_file():
                raise ValueError(f"{path}:{lineno}: image {image} does not exist")
        out.append(Sample(obj["text"], image, prompt))
    return out


def _from_txt(path: Path) -> list[Sample]:
    return [Sample(line.strip()) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _from_dir(folder: Path, captions_required: bool = True) -> list[Sample]:
    if is_flickr8k(folder):
        return from_flickr8k(folder)
    if any(p.suffix in (".parquet", ".arrow") for p in folder.iterdir()):
        return from_hf_files(folder)
    out = []
    images = {p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    for p in sorted(folder.iterdir()):
        if p.suffix == ".jsonl":
            out += _from_jsonl(p)
        elif p.suffix == ".txt" and p.stem not in images:  # a caption file belongs to its image
            out += _from_txt(p)
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            caption = p.with_suffix(".txt")
            if not caption.is_file() and captions_required:  # training needs the target text
                raise ValueError(f"image {p} has no caption file {caption.name}")
            out.append(Sample(caption.read_text(encoding="utf-8").strip() if caption.is_file() else "", p))
    return out


def read_samples(path: str | Path, captions_required: bool = True, what: str = "data") -> list[Sample]:
    """Samples of a JSONL/TXT file, a folder, or the name `chatterbot`, in a stable order.

    `captions_required=False` (INT8 calibration: only the inputs matter) takes a folder's images
    without a caption file as image-only samples. `what` names the data in error messages.
    """
    if str(path) == "chatterbot":
        return [Sample(t) for t in chatterbot_texts()]
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} {path} does not exist")
    try:
        if path.is_dir():
            samples = _from_dir(path, captions_required)
        elif path.suffix == ".jsonl":
            samples = _from_jsonl(path)
        elif path.suffix == ".txt":
            samples = _from_txt(path)
        elif path.suffix == ".json":
            samples = json_records(path)
        elif path.suffix in (".parquet", ".arrow"):
            samples = from_hf_files(path)
        else:
            raise ValueError(f"{what} {path}: expected a folder, a .jsonl/.json/.txt/.parquet/.arrow file, "
                             f"or 'chatterbot'")
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not UTF-8 text") from None
    if not samples:
        raise ValueError(f"{what} {path} is empty")
    return samples


def chatterbot_texts(language: str = "english") -> list[str]:
    """Distinct utterances of the chatterbot-corpus package (BSD-3-Clause), sorted, for one language."""
    import yaml

    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("package chatterbot-corpus is not installed (make setup installs it)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / language
    texts = set()
    for f in sorted(folder.glob("*.yml")):
        doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        for conv in doc.get("conversations", []) or []:
            for utt in conv:
                if isinstance(utt, str) and utt.strip():
                    texts.add(" ".join(utt.split()))
    if not texts:
        raise ValueError(f"chatterbot-corpus has no {language!r} conversations")
    return sorted(texts)


def token_windows(ids: list[int], length: int) -> list[list[int]]:
    """`ids` cut into consecutive windows of `length` (the last one shorter); windows of fewer than
    2 ids are dropped: they hold no next-token pair. Training packs (TokenBatches.packed) and the
    INT8 report's held-out windows (phm.export.int8) are cut this way."""
    return [ids[i:i + length] for i in range(0, len(ids), length) if len(ids[i:i + length]) >= 2]


def model_inputs(batch: dict) -> dict:
    """The batch as the model takes it: without the answer mask evaluation reads."""
    return {k: v for k, v in batch.items() if k != ANSWER_MASK}


def to_device(batch: dict, device) -> dict:
    """A batch's tensors on `device` (other values as they are)."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def pad_batch(seqs: list[list[int]], pad_id: int) -> dict:
    """Token sequences right-padded into one batch (input_ids, attention_mask)."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(s)
        mask[row, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def is_held_out(key: str, fraction: float, salt: str = "phm") -> bool:
    """Whether the item identified by `key` falls in the held-out `fraction` (a hash of the key:
    stable across runs and machines)."""
    return int.from_bytes(hashlib.sha256((salt + key).encode()).digest()[:8], "big") / 2 ** 64 < fraction


def split_holdout(texts: list, fraction: float = 0.15, salt: str = "phm", key=str) -> tuple[list, list]:
    """(train, held-out) split by a hash of each item's `key` (the text itself by default; a Sample's
    text and image path): disjoint, stable across runs and machines."""
    train, held = [], []
    for t in texts:
        (held if is_held_out(key(t), fraction, salt) else train).append(t)
    return train, held


def sample_key(sample: Sample) -> str:
    """What identifies a sample for the held-out split: its text and its image."""
    return sample.text if sample.image is None else f"{sample.text}\0{sample.image.name}"


def chat_turns(tokenizer, texts: list[str]) -> list[str]:
    """Each text as one user turn of the tokenizer's chat template (instruct models see their prompts so)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template: the model's tokenizer has no chat template")
    return [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False) for t in texts]


@torch.no_grad()
def sample_teacher_texts(model, tokenizer, num: int, max_new_tokens: int = 64, seed: int = 0,
                         batch_size: int = 16, prompts: list[str] | None = None,
                         temperature: float = 1.0, top_k: int = 50, progress: bool = False) -> list[str]:
    """Data-free KD: `num` texts sampled from the (dense) teacher, from BOS or from `prompts`.

    Deterministic for a given seed on a given device. Needs a language-model head. `progress`: a
    bar over the sampled tokens.
    """
    from tqdm.auto import tqdm

    if model.get_output_embeddings() is None:
        raise ValueError("teacher-sampled data needs a language model head; pass --data for encoders")
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    texts = []
    bar = tqdm(total=num * max_new_tokens, desc="teacher sampling", unit="token", disable=not progress,
               dynamic_ncols=True)
    for first in range(0, num, batch_size):
        count = min(batch_size, num - first)
        if prompts:
            chunk = [prompts[(first + i) % len(prompts)] for i in range(count)]
            enc = tokenizer(chunk, return_tensors="pt", padding=True)
            ids, mask = enc["input_ids"], enc["attention_mask"]
        else:
            ids = torch.full((count, 1), start, dtype=torch.long)
            mask = torch.ones_like(ids)
        ids, mask = ids.to(device), mask.to(device)
        for _ in range(max_new_tokens):  # plain sampling loop: full recompute is fine at this size
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -1].float() / temperature
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            probs = torch.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=gen).to(device)
            ids = torch.cat([ids, nxt], dim=1)
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            bar.update(count)
        texts += tokenizer.batch_decode(ids, skip_special_tokens=False)
    bar.close()
    return texts


class TokenBatches:
    """Deterministic, randomly accessible batches of token sequences (right padding).

    `batch(step)` -> {"input_ids": (B, T), "attention_mask": (B, T)}; T = longest in the batch.

    `group_by_length`: each epoch's shuffled order is cut into windows of `GROUP_WINDOW` batches, each
    window sorted by length and cut into batches, and the batches shuffled again (Hugging Face's
    `group_by_length` idea). Every batch then holds sequences of about one length, so little of it is
    padding: on the chatterbot utterances (12.9 tokens on average, up to 64) only 24 % of the token
    positions of a random batch of 32 are real text, against 96 % grouped, and a CPU step costs about
    what its padded positions cost. Which sequences share a batch changes; each epoch still visits every
    sequence once (but the `len(sequences) % batch_size` dropped ones) in a seeded random batch order.
    """

    GROUP_WINDOW = 50  # batches per sorted window: large enough for near-uniform lengths, small enough to mix

    def __init__(self, sequences: list[list[int]], batch_size: int, pad_id: int = 0, seed: int = 0,
                 group_by_length: bool = False):
        sequences = [list(s) for s in sequences if len(s) > 0]
        if not sequences:
            raise ValueError("no non-empty token sequences to train on")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sequences, self.batch_size, self.pad_id, self.seed = sequences, batch_size, pad_id, seed
        self.group_by_length = group_by_length
        self._epoch_order: tuple[int, torch.Tensor] | None = None  # (epoch, order): batch(step) walks one epoch

    @classmethod
    def from_texts(cls, tokenizer, texts: list[str], batch_size: int, max_length: int = 128, seed: int = 0,
                   add_special_tokens: bool = True, group_by_length: bool = False) -> "TokenBatches":
        if not texts:
            raise ValueError("no texts to train on")
        enc = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=add_special_tokens)
        return cls(enc["input_ids"], batch_size, _pad_id(tokenizer), seed, group_by_length)

    @classmethod
    def packed(cls, tokenizer, texts: list[str], batch_size: int, length: int = 128, seed: int = 0,
               separator: str = "\n") -> "TokenBatches":
        """Causal-LM packing: `texts` joined by `separator` into one token stream, cut into windows of
        `length` tokens (the last, shorter one kept when it has ≥ 2). Every window is full, so the
        model sees every position up to `length` — per-sample batches of short lines never train the
        positions a long prompt reaches. No special tokens are added (a window starts mid-stream)."""
        if not texts:
            raise ValueError("no texts to train on")
        if length < 2:
            raise ValueError(f"packing needs windows of >= 2 tokens, got {length}")
        ids = tokenizer(separator.join(texts), add_special_tokens=False)["input_ids"]
        return cls(token_windows(ids, length), batch_size, _pad_id(tokenizer), seed)

    def __len__(self) -> int:
        """Batches per epoch (the last partial batch is dropped when there is more than one)."""
        return max(1, len(self.sequences) // self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor:
        """Sequence indices of `epoch` in batch order: a pure function of (seed, epoch)."""
        if self._epoch_order is not None and self._epoch_order[0] == epoch:
            return self._epoch_order[1]
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.sequences), generator=gen)
        if self.group_by_length and len(self) > 1:
            size, window = self.batch_size, self.batch_size * self.GROUP_WINDOW
            lengths = [len(s) for s in self.sequences]
            grouped = []
            for first in range(0, len(order), window):  # sorted() is stable: ties keep the shuffled order
                grouped += sorted(order[first:first + window].tolist(), key=lambda i: -lengths[i])
            batches = torch.tensor(grouped[:len(self) * size]).view(len(self), size)
            order = batches[torch.randperm(len(self), generator=gen)].flatten()
        self._epoch_order = (epoch, order)
        return order

    def batch(self, step: int) -> dict:
        epoch, pos = divmod(step, len(self))
        idx = self._order(epoch)[pos * self.batch_size:(pos + 1) * self.batch_size].tolist()
        return self.collate([self.sequences[i] for i in idx])

    def collate(self, seqs: list[list[int]]) -> dict:
        return pad_batch(seqs, self.pad_id)

    def all_batches(self, batch_size: int | None = None):
        """Every sequence once, in order (evaluation)."""
        size = batch_size or self.batch_size
        for first in range(0, len(self.sequences), size):
            yield self.collate(self.sequences[first:first + size])


class ImageTextBatches:
    """Image+caption batches through a Hugging Face processor (VLMs): a user turn with the image and
    the sample's prompt (or the fixed `prompt`), the caption/answer as the assistant turn. Same
    `batch(step)` contract as TokenBatches.
    """

    def __init__(self, processor, samples: list[Sample], batch_size: int, prompt: str = "Describe the image.",
                 seed: int = 0, answer_mask: bool = False):
        samples = [s for s in samples if s.image is not None]
        if not samples:
            raise ValueError("no image+caption samples to train on")
        self.processor, self.samples, self.batch_size, self.prompt, self.seed = processor, samples, batch_size, prompt, seed
        self.answer_mask = answer_mask  # add ANSWER_MASK to every batch (held-out batches)

    def __len__(self) -> int:
        return max(1, len(self.samples) // self.batch_size)

    def batch(self, step: int) -> dict:
        epoch, pos = divmod(step, len(self))
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        idx = torch.randperm(len(self.samples), generator=gen)[pos * self.batch_size:(pos + 1) * self.batch_size]
        return self.collate([self.samples[i] for i in idx.tolist()])

    def all_batches(self, batch_size: int | None = None):
        """Every sample once, in order (evaluation)."""
        size = batch_size or self.batch_size
        for first in range(0, len(self.samples), size):
            yield self.collate(self.samples[first:first + size])

    def _chat(self, s: Sample) -> list[dict]:
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.prompt or self.prompt}]},
                {"role": "assistant", "content": [{"type": "text", "text": s.text}]},
                *({"role": role, "content": [{"type": "text", "text": text}]} for role, text in s.turns)]

    def collate(self, chosen: list[Sample]) -> dict:
        from PIL import Image

        chats = [self._chat(s) for s in chosen]
        texts = [self.processor.apply_chat_template(chat, tokenize=False) for chat in chats]
        images = [Image.open(s.image).convert("RGB") for s in chosen]
        batch = dict(self.processor(text=texts, images=images, return_tensors="pt", padding=True))
        if self.answer_mask:
            batch[ANSWER_MASK] = self._answer_mask(chats, images, batch)
        return batch

    def _answer_mask(self, chats: list[list[dict]], images: list, batch: dict) -> torch.Tensor:
        """(batch, T) bool: the tokens of every assistant turn, end-of-turn token included. Each turn's
        span is where the chat rendered up to it (generation prompt added) and rendered through it
        stop, both processed with the image like the whole chat; a token that merges across the
        boundary counts as the answer's."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        out = torch.zeros_like(mask, dtype=torch.bool)
        left = getattr(getattr(self.processor, "tokenizer", None), "padding_side", "right") == "left"
        for row, (chat, image) in enumerate(zip(chats, images)):
            length = int(mask[row].sum())
            offset = ids.shape[1] - length if left else 0
            full = ids[row, offset:offset + length].tolist()

            def shared(messages: list[dict], prompt: bool) -> int:
                """How many leading tokens of the whole chat the chat `messages` renders to."""
                text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
                part = self.processor(text=[text], images=[image])["input_ids"][0]
                part = part.tolist() if torch.is_tensor(part) else list(part)
                n = 0
                while n < min(len(part), len(full)) and part[n] == full[n]:
                    n += 1
                return n

            for turn, message in enumerate(chat):
                if message["role"] == "assistant":
                    out[row, offset + shared(chat[:turn], True):offset + shared(chat[:turn + 1], False)] = True
        return out
