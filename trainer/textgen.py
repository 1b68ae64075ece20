"""More training text of the same kind: an instruct LM's sampled replies to the training texts.

Why: with a small corpus the student fits its training sentences far better than unseen ones (MiniLM on
the 1,603 chatterbot utterances: KD loss ≈ 0.03 on training batches, held-out cosine ~0.91;
docs/trainer.md). The teacher's outputs are the labels, so any text is training data; the replies of a
chat model to the training utterances are text of the same conversational kind that no utterance
already covers. Encoders cannot sample their own text, so this is also their data-free route
(`phm-train ENCODER --data prompts.txt --augment-lm sample:smollm2`).

    replies = reply_sentences(lm, tokenizer, prompts, rounds=2, seed=0)

Each round answers every prompt once (a new seed per round); each reply is split into sentences, kept
when they have ≥ `min_words` words and end in . ! or ?, and deduplicated across everything. On a
given device and seed the result is deterministic (tested).
"""

from __future__ import annotations

import re

import torch
from tqdm.auto import tqdm

__all__ = ["reply_sentences"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _prompt(tokenizer, text: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text + "\n"


def _sentences(reply: str, per_reply: int, min_words: int) -> list[str]:
    out = []
    for line in reply.strip().split("\n")[:2]:  # later lines of a reply drift into lists and code
        for s in _SENTENCE_END.split(line.strip())[:per_reply]:
            if len(s.split()) >= min_words and s[-1] in ".!?":
                out.append(s)
    return out[:per_reply]


@torch.no_grad()
def reply_sentences(model, tokenizer, prompts: list[str], rounds: int = 1, seed: int = 0, batch_size: int = 48,
                    max_new_tokens: int = 56, temperature: float = 0.9, top_k: int = 50, per_reply: int = 3,
                    min_words: int = 3, exclude=(), progress: bool = True) -> list[str]:
    """Sentences from `rounds` sampled replies of the causal LM `model` to every prompt, first-seen order.

    `exclude`: texts never to return (compared case-insensitively), e.g. an evaluation split.
    """
    if model.get_output_embeddings() is None:
        raise ValueError("--augment-lm needs a causal language model (one with an LM head)")
    if not prompts:
        raise ValueError("--augment-lm needs text prompts: the --data texts")
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # decoder-only batches pad on the left
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    skip = {t.lower() for t in exclude}
    seen: dict[str, None] = {}  # insertion-ordered set
    chats = [_prompt(tokenizer, p) for p in prompts]
    bar = tqdm(total=rounds * len(chats), desc="replies", unit="prompt", disable=not progress)
    try:
        for r in range(rounds):
            torch.manual_seed(seed * 1000 + r)  # generate() samples from the global generator
            for first in range(0, len(chats), batch_size):
                enc = tokenizer(chats[first:first + batch_size], return_tensors="pt", padding=True).to(device)
                ids = model.generate(**enc, do_sample=True, top_k=top_k, temperature=temperature,
                                     max_new_tokens=max_new_tokens, pad_token_id=pad_id)
                for reply in tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True):
                    for s in _sentences(reply, per_reply, min_words):
                        if s.lower() not in skip:
                            seen.setdefault(s)
                bar.update(min(batch_size, len(chats) - first))
                bar.set_postfix(sentences=len(seen))
    finally:
        bar.close()
        tokenizer.padding_side = side
    return list(seen)
