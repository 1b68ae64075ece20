"""What a run shows while it trains: the PHM-only student evaluated on held-out data every N steps,
the best-evaluated weights (what the run ends on), and TensorBoard scalars beside train_log.jsonl.

The evaluated student is the one the run will save: every wrapper at λ = 1 (PHM only) with the
current LoRA, against the teacher (λ = 0, LoRA off) on the same held-out batches, through the run's
own forward module (so FSDP2 gathers what it reads). Metrics are phm.trainer.evaluate's: top-1
agreement and perplexity for LMs (VLM batches: over the tokens of the assistant turns, the caption or
answer, data.ANSWER_MASK), sentence-embedding cosine for encoders. Every process evaluates every held-out batch
(identical results, nothing to exchange); rank 0 writes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .data import model_inputs, to_device
from .evaluate import metrics, output_stats
from .parallel import full_tensor, like

__all__ = ["Monitor"]

log = logging.getLogger(__name__)

BEST_PREFIX = "best/"


class Monitor:
    """Held-out evaluation, best weights and TensorBoard scalars of one distill run."""

    def __init__(self, batches: list[dict] | None, objective: str, every: int, keep_best: bool,
                 tensorboard_dir: Path | None, main: bool):
        if every and not batches:
            raise ValueError("evaluation during training (eval_every) needs held-out data (holdout > 0)")
        self.batches, self.objective, self.every, self.keep_best = batches or [], objective, every, keep_best
        self.metric = "top1_agreement" if objective == "logits" else "cosine_mean"
        self.reference: list[dict] | None = None
        self.best: dict | None = None            # {"step", "value"}
        self.best_tensors: dict[str, torch.Tensor] = {}
        self.writer = _writer(tensorboard_dir) if main and tensorboard_dir is not None else None

    def due(self, done: int, steps: int) -> bool:
        return bool(self.every and self.batches) and (done % self.every == 0 or done == steps)

    @torch.no_grad()
    def evaluate(self, engine, wrappers, named: list, device, step: int) -> dict:
        """Metrics of the PHM-only student now; keeps its weights when they are the best so far."""
        batches = [to_device(b, device) for b in self.batches]
        if self.reference is None:
            self.reference = [output_stats(engine(model_inputs(b), teacher=True)[0], b, self.objective) for b in batches]
        for w in wrappers:  # the next training step sets them again
            w.lam, w.record_recon, w.recon_terms = 1.0, False, None
        student = [output_stats(engine(model_inputs(b))[0], b, self.objective) for b in batches]
        result = {k: round(v, 6) if isinstance(v, float) else v
                  for k, v in metrics(student, self.reference, self.objective).items()}
        value = result[self.metric]
        if self.keep_best and (self.best is None or value >= self.best["value"]):  # a tie: the later, more trained
            self.best = {"step": step, "value": value}
            self.best_tensors = {n: full_tensor(p.detach()).cpu().clone() for n, p in named}
        log.info("step %d held-out: %s", step, " ".join(f"{k}={v}" for k, v in result.items()))
        self.scalars(step, result, "eval")
        return {"step": step, "stage": "eval", **result}

    def scalars(self, step: int, values: dict, group: str) -> None:
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(f"{group}/{key}", value, step)

    def restore_best(self, named: list) -> None:
        """Load the best-evaluated weights into the trainable parameters (keep_best)."""
        if not self.best_tensors:
            return
        with torch.no_grad():
            for n, p in named:
                p.copy_(like(p, self.best_tensors[n]))
        log.info("ending on the weights of step %d (best held-out %s %.4f)", self.best["step"], self.metric,
                 self.best["value"])

    def state(self) -> tuple[dict, dict]:
        """(JSON, tensors) of the training state."""
        return {"best": self.best}, {BEST_PREFIX + n: t for n, t in self.best_tensors.items()}

    def load(self, doc: dict, tensors: dict) -> None:
        self.best = doc.get("best")
        self.best_tensors = {k[len(BEST_PREFIX):]: v for k, v in tensors.items() if k.startswith(BEST_PREFIX)}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed: no TensorBoard scalars (train_log.jsonl has them all)")
        return None
    return SummaryWriter(log_dir=str(folder))
