"""Fidelity of a student against its teacher on held-out data.

Encoders: mean cosine between the sentence embeddings (mean pooling + L2, as sentence-transformers).
Causal LMs: next-token top-1 agreement with the teacher and perplexity on the held-out text.

    ref = reference_outputs(teacher, batches, "logits")      # once
    compare(student, ref, batches, "logits")                # {"top1_agreement": …, "ppl": …}
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .models import mean_pool

__all__ = ["compare", "count_params", "reference_outputs"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def _stats(model: nn.Module, batch: dict, objective: str):
    out = model(**batch)
    mask = batch["attention_mask"]
    if objective == "embedding":
        return {"emb": mean_pool(out.last_hidden_state.float(), mask)}
    logits = out.logits[:, :-1].float()
    labels = batch["input_ids"][:, 1:]
    valid = mask[:, 1:].bool()
    nll = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    return {"top1": logits.argmax(-1), "nll": (nll * valid).sum().item(), "tokens": int(valid.sum()), "valid": valid}


@torch.no_grad()
def reference_outputs(teacher: nn.Module, batches: list[dict], objective: str) -> list[dict]:
    teacher.eval()
    return [_stats(teacher, b, objective) for b in batches]


@torch.no_grad()
def compare(student: nn.Module, reference: list[dict], batches: list[dict], objective: str) -> dict:
    """Fidelity metrics of `student` against `reference` (teacher outputs on the same batches)."""
    student.eval()
    if objective == "embedding":
        cos = torch.cat([F.cosine_similarity(_stats(student, b, objective)["emb"], r["emb"], dim=-1)
                         for b, r in zip(batches, reference)])
        return {"cosine_mean": cos.mean().item(), "cosine_min": cos.min().item(), "sentences": cos.numel()}
    agree = nll = tokens = teacher_nll = 0
    for b, r in zip(batches, reference):
        s = _stats(student, b, objective)
        agree += int(((s["top1"] == r["top1"]) & r["valid"]).sum())
        nll, teacher_nll, tokens = nll + s["nll"], teacher_nll + r["nll"], tokens + s["tokens"]
    ppl, teacher_ppl = math.exp(nll / tokens), math.exp(teacher_nll / tokens)
    return {"top1_agreement": agree / tokens, "ppl": ppl, "teacher_ppl": teacher_ppl, "ppl_ratio": ppl / teacher_ppl,
            "tokens": tokens}
