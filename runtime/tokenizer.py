"""The artifacts' tokenizer as phm-run uses it, loaded in milliseconds.

`load_tokenizer(hf_dir)` reads `hf/tokenizer.json` with the `tokenizers` library (the Rust core that
transformers' fast tokenizers wrap) plus the special tokens of `tokenizer_config.json`, so a start
needs neither `import transformers` (~2 s) nor `AutoTokenizer.from_pretrained` (~1.8 s on SmolLM2).
Encoding and decoding are the same library calls transformers makes for a fast tokenizer, including
its `clean_up_tokenization_spaces` step, so the ids and text equal transformers' (tested on every
shipped and tiny tokenizer). A chat template is rendered by transformers, imported only for
`--chat`; a model dir without tokenizer.json (a sentencepiece-only tokenizer) falls back to
transformers' AutoTokenizer as a whole.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["RuntimeTokenizer", "TokenizerError", "load_tokenizer"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


class TokenizerError(ValueError):
    """No usable tokenizer in the artifacts: one line."""


def _clean_up(text: str) -> str:
    """transformers' `clean_up_tokenization` (PreTrainedTokenizerBase), applied where the config asks."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class RuntimeTokenizer:
    """encode / decode / eos_token_id / pad_token_id / chat_template of an artifacts' hf/ dir."""

    def __init__(self, hf_dir: Path, core, config: dict):
        self.hf_dir, self.core, self.config = hf_dir, core, config
        self.eos_token_id = self._id("eos_token")
        self.pad_token_id = self._id("pad_token")
        self.clean_up = bool(config.get("clean_up_tokenization_spaces", False))
        template = hf_dir / "chat_template.jinja"
        self.chat_template = (template.read_text() if template.is_file() else config.get("chat_template"))
        self._hf = None

    def _id(self, key: str) -> int | None:
        text = _token_text(self.config.get(key))
        return None if text is None else self.core.token_to_id(text)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.core.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        text = self.core.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return _clean_up(text) if self.clean_up else text

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            chat_template: str | None = None) -> str:
        """The prompt text of `messages` in the model's template, or in `chat_template` (transformers
        renders it)."""
        if self._hf is None:
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(self.hf_dir, local_files_only=True)
        return self._hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False,
                                            chat_template=chat_template)


class _HFTokenizer:
    """transformers' AutoTokenizer behind the same five names (no tokenizer.json)."""

    def __init__(self, tok):
        self.tok = tok
        self.eos_token_id, self.pad_token_id = tok.eos_token_id, tok.pad_token_id
        self.chat_template = getattr(tok, "chat_template", None)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tok(text, add_special_tokens=add_special_tokens)["input_ids"]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            chat_template: str | None = None) -> str:
        return self.tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False,
                                            chat_template=chat_template)


def load_tokenizer(hf_dir: str | Path):
    """The tokenizer of an artifacts' hf/ dir (TokenizerError when there is none or it is unreadable)."""
    hf_dir = Path(hf_dir)
    message = f"{hf_dir} holds no tokenizer: pass a model exported with its tokenizer"
    if not any((hf_dir / n).is_file() for n in _TOKENIZER_FILES):
        raise TokenizerError(message)
    if (hf_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            core = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
            core.no_padding()  # a file may carry padding/truncation settings; transformers clears them
            core.no_truncation()  # per call, and one prompt is never padded or cut
            config_path = hf_dir / "tokenizer_config.json"
            config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        except Exception as e:  # tokenizers raises plain Exceptions on a malformed file
            raise TokenizerError(f"{hf_dir}/tokenizer.json cannot be read: {str(e).splitlines()[0]}") from None
        if not isinstance(config, dict):
            raise TokenizerError(f"{hf_dir}/tokenizer_config.json: the file must be an object")
        return RuntimeTokenizer(hf_dir, core, config)
    try:
        from transformers import AutoTokenizer

        return _HFTokenizer(AutoTokenizer.from_pretrained(hf_dir, local_files_only=True))
    except (OSError, ValueError, TypeError):
        raise TokenizerError(message) from None
