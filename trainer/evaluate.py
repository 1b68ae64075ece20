"""Fidelity of a student against its teacher on held-out data.

Encoders: mean cosine between the sentence embeddings (mean pooling + L2, as sentence-transformers).
Causal LMs: next-token top-1 agreement with the teacher and perplexity on the held-out text.

    ref = reference_outputs(teacher, batches, "logits")      # once
    compare(student, ref, batches, "logits")                # {"top1_agreement": …, "ppl": …}

`output_stats` / `metrics` are the same from a forward's output tensor: the trainer's evaluation
during training (distill.py) runs its forwards through its own (data-parallel) module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .data import ANSWER_MASK, model_inputs
from .models import mean_pool

__all__ = ["compare", "count_params", "metrics", "output_stats", "reference_outputs"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def _stats(model: nn.Module, batch: dict, objective: str):
    out = model(**model_inputs(batch))
    return output_stats(out.logits if objective == "logits" else out.last_hidden_state, batch, objective)


@torch.no_grad()
def output_stats(main: torch.Tensor, batch: dict, objective: str) -> dict:
    """What the metrics need of one batch's logits (LM) or last hidden state (encoder). An LM batch with
    an answer mask (held-out image+text batches) is scored on the assistant turns' tokens only."""
    mask = batch["attention_mask"]
    if objective == "embedding":
        return {"emb": mean_pool(main.float(), mask)}
    logits = main[:, :-1].float()
    labels = batch["input_ids"][:, 1:]
    valid = mask[:, 1:].bool()
    if ANSWER_MASK in batch:
        valid &= batch[ANSWER_MASK][:, 1:].bool()
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
    return metrics([_stats(student, b, objective) for b in batches], reference, objective)


def metrics(student: list[dict], reference: list[dict], objective: str) -> dict:
    """Fidelity metrics of a student's `output_stats` against the teacher's, batch by batch."""
    if objective == "embedding":
        cos = torch.cat([F.cosine_similarity(s["emb"], r["emb"], dim=-1) for s, r in zip(student, reference)])
        return {"cosine_mean": cos.mean().item(), "cosine_min": cos.min().item(), "sentences": cos.numel()}
    agree = nll = tokens = teacher_nll = 0
    for s, r in zip(student, reference):
        agree += int(((s["top1"] == r["top1"]) & r["valid"]).sum())
        nll, teacher_nll, tokens = nll + s["nll"], teacher_nll + r["nll"], tokens + s["tokens"]
    ppl, teacher_ppl = math.exp(nll / tokens), math.exp(teacher_nll / tokens)
    return {"top1_agreement": agree / tokens, "ppl": ppl, "teacher_ppl": teacher_ppl, "ppl_ratio": ppl / teacher_ppl,
            "tokens": tokens}
