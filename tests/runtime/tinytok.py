"""A word-level tokenizer for the tiny models' 256-token vocab ('w5' → 5), so their artifacts dirs
are complete the way a real model's are (phm-run needs hf/ to hold a tokenizer)."""

from __future__ import annotations

from tinymodels import VOCAB


def word_tokenizer(special: dict[int, str] | None = None, unk: str = "<pad>"):
    """PreTrainedTokenizerFast: id 0 '<pad>', id 2 '</s>' (the tiny configs' pad/eos), `special`
    ({id: token}) added as special tokens at exactly those ids; words outside the vocab become `unk`
    (the pad token by default, whose embedding the tiny models keep at zero)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = {0: "<pad>", 2: "</s>", **(special or {})}
    vocab = {special.get(i, f"w{i}"): i for i in range(VOCAB)}
    core = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    extra = [t for i, t in special.items() if i not in (0, 2)]
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                   additional_special_tokens=extra)
