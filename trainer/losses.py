"""Distillation losses. Every token-level loss averages over real tokens only (mask = 1).

Shapes: logits (batch, seq, vocab); hidden (batch, seq, dim); mask (batch, seq) of 0/1.

`total` (every loss takes it): how a normaliser (token or sample count) is summed. The default keeps
it local; data-parallel training passes `World.total` (parallel.py), so each process divides its
own sum by the count over all processes and the losses of the processes add up to the loss of the
whole batch exactly, whatever the padding of each process's rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["causal_ce_loss", "embedding_kd_loss", "hidden_kd_loss", "kd_loss", "local_total", "normalized_mse"]


def local_total(count: torch.Tensor) -> torch.Tensor:
    """A normaliser as this process sees it (one process: the whole batch)."""
    return count.detach()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None, total=local_total) -> torch.Tensor:
    if mask is None:
        return values.sum() / total(values.new_tensor(float(values.numel())))
    mask = mask.to(values.dtype)
    return (values * mask).sum() / total(mask.sum()).clamp_min(1.0)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0,
            mask: torch.Tensor | None = None, total=local_total) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)) per token, averaged over masked tokens.

    The T² factor keeps gradient magnitudes comparable across temperatures (Hinton et al.).
    """
    t = temperature
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (batch, seq)
    return _masked_mean(kl, mask, total) * t * t


def causal_ce_loss(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None = None,
                   label_smoothing: float = 0.0, total=local_total) -> torch.Tensor:
    """Next-token cross-entropy: position i predicts token i+1; padding (mask 0) is ignored."""
    labels = input_ids[:, 1:].clone()
    if mask is not None:
        labels[mask[:, 1:] == 0] = -100
    summed = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             ignore_index=-100, label_smoothing=label_smoothing, reduction="sum")
    return summed / total((labels != -100).sum().float()).clamp_min(1.0)


def normalized_mse(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """‖pred − target‖² / ‖target‖² (scale-free; 0 = exact, 1 = as far as predicting zero)."""
    return (pred.float() - target.float()).pow(2).sum() / target.float().pow(2).sum().clamp_min(eps)


def hidden_kd_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                   mask: torch.Tensor | None = None, total=local_total) -> torch.Tensor:
    """Per-token normalised MSE of hidden states, ‖h_s − h_t‖² / ‖h_t‖², averaged over tokens."""
    err = (student_hidden.float() - teacher_hidden.float()).pow(2).sum(-1)
    ref = teacher_hidden.float().pow(2).sum(-1).clamp_min(1e-8)
    return _masked_mean(err / ref, mask, total)


def embedding_kd_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, total=local_total) -> torch.Tensor:
    """Mean (1 − cosine) between sentence embeddings (batch, dim)."""
    return _masked_mean(1.0 - F.cosine_similarity(student_emb.float(), teacher_emb.float(), dim=-1), None, total)
