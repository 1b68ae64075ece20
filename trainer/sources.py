"""Training data in the layouts people already have, read into `Sample`s (data.py):

  - Hugging Face `datasets` files: `.parquet`, `.arrow`, or a folder of them (`load_dataset` on the
    local files: Arrow memory-maps them, so a large set is not copied into Python up front); a
    `text` column, or LLaVA's `conversations` (+ `image`) columns.
  - LLaVA conversation JSONL / JSON: `{"image": "x.jpg", "conversations": [{"from": "human",
    "value": "<image>\\nWhat is …?"}, {"from": "gpt", "value": "…"}, …]}`: the first human turn is
    the prompt (the `<image>` placeholder removed: the processor's chat template places the image),
    its answer the target, later turns follow as more of the same chat; a record without an image
    is a text chat, its turns joined as one text.
  - Flickr8k: a folder with `captions.txt` (Kaggle's `image,caption` CSV) or `Flickr8k.token.txt`
    (`name.jpg#0<TAB>caption`) and the images beside it or in `Images/` / `Flicker8k_Dataset/`: one
    sample per caption.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

__all__ = ["FLICKR_CAPTIONS", "conversation_record", "from_conversations", "from_flickr8k", "from_hf_files",
           "is_flickr8k", "json_records"]

FLICKR_CAPTIONS = ("captions.txt", "Flickr8k.token.txt")
_IMAGE_DIRS = ("Images", "Flicker8k_Dataset", "Flickr8k_Dataset", "images", ".")
_HF_SUFFIXES = (".parquet", ".arrow")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def _sample(text: str, image: Path | None = None, prompt: str | None = None, turns: tuple = ()):
    from .data import Sample

    return Sample(text, image, prompt, turns)


def _image(root: Path, name: str, where: str) -> Path:
    image = (root / name).resolve()
    if not image.is_file():
        raise ValueError(f"{where}: image {image} does not exist")
    return image


def from_conversations(record: dict, root: Path, where: str):
    """One LLaVA-style record → a Sample (image relative to `root`)."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, dict) for t in turns):
        raise ValueError(f"{where}: \"conversations\" must be a list of at least a question and an answer")
    chat = []
    for turn in turns:
        role, value = _ROLES.get(turn.get("from", turn.get("role"))), turn.get("value", turn.get("content"))
        if role is None or not isinstance(value, str):
            raise ValueError(f"{where}: each turn needs \"from\" (human/gpt) and a \"value\" string")
        chat.append((role, value.replace("<image>", "").strip()))
    if chat[0][0] != "user" or chat[1][0] != "assistant":
        raise ValueError(f"{where}: a conversation starts with a human turn and its answer")
    image = record.get("image")
    if not image:  # a text chat: the whole of it is the text
        return _sample("\n".join(text for _, text in chat))
    return _sample(chat[1][1], _image(root, image, where), chat[0][1], tuple(chat[2:]))


def from_hf_files(path: Path) -> list:
    """Samples of local parquet/arrow files (a file or a folder of them) through `datasets`."""
    try:
        import datasets
    except ImportError:
        raise ValueError(f"{path}: reading {', '.join(_HF_SUFFIXES)} needs the `datasets` package "
                         "(pip install datasets)") from None
    files = sorted(p for p in path.iterdir() if p.suffix in _HF_SUFFIXES) if path.is_dir() else [path]
    kind = "parquet" if files[0].suffix == ".parquet" else "arrow"
    datasets.disable_progress_bars()
    try:
        table = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    except Exception as e:  # datasets raises many types for a bad file; one line names it
        raise ValueError(f"{path}: not a readable {kind} dataset: {str(e).splitlines()[0]}") from None
    root = path if path.is_dir() else path.parent
    if "conversations" in table.column_names:
        return [from_conversations(dict(row), root, f"{path}[{i}]") for i, row in enumerate(table)]
    if "text" not in table.column_names:
        raise ValueError(f"{path}: needs a \"text\" (or LLaVA \"conversations\") column; "
                         f"has {', '.join(table.column_names)}")
    images = table["image"] if "image" in table.column_names else None
    return [_sample(text, _image(root, images[i], f"{path}[{i}]") if images and images[i] else None)
            for i, text in enumerate(table["text"]) if isinstance(text, str) and text.strip()]


def is_flickr8k(folder: Path) -> bool:
    return any((folder / name).is_file() for name in FLICKR_CAPTIONS)


def _flickr_rows(folder: Path):
    kaggle = folder / "captions.txt"
    if kaggle.is_file():
        with kaggle.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != ["image", "caption"]:
                raise ValueError(f"{kaggle}: expected the header \"image,caption\", got {header}")
            for lineno, row in enumerate(reader, 2):
                if len(row) != 2:
                    raise ValueError(f"{kaggle}:{lineno}: expected image,caption")
                yield row[0], row[1], f"{kaggle}:{lineno}"
        return
    token = folder / "Flickr8k.token.txt"
    for lineno, line in enumerate(token.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            name, sep, caption = line.partition("\t")
            if not sep:
                raise ValueError(f"{token}:{lineno}: expected name.jpg#N<TAB>caption")
            yield name.split("#")[0], caption, f"{token}:{lineno}"


def from_flickr8k(folder: Path) -> list:
    """One sample per caption of a Flickr8k folder (module doc)."""
    images = next((folder / d for d in _IMAGE_DIRS if (folder / d).is_dir() and
                   any((folder / d).glob("*.jpg"))), folder)
    return [_sample(caption.strip(), _image(images, name, where)) for name, caption, where in _flickr_rows(folder)
            if caption.strip()]


def conversation_record(obj) -> bool:
    return isinstance(obj, dict) and "conversations" in obj and "text" not in obj


def json_records(path: Path) -> list:
    """A `.json` file holding a list of LLaVA records (the layout LLaVA's own data files use)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(doc, list):
        raise ValueError(f"{path}: expected a list of {{\"image\", \"conversations\"}} records")
    return [from_conversations(r, path.parent, f"{path}[{i}]") for i, r in enumerate(doc)]
