"""Accuracy/size report of an export: metrics, a markdown table, a plot, a JSON record.

    rows = [ReportRow("PHM B=2", "int8", metrics(ref_logits, logits, labels), size_bytes), …]
    write_report(rows, out_dir)   # report.md, report.png, report.json (atomic writes)

Metrics compare a variant's logits with the FP32 model's on the same held-out tokens: mean cosine
of the logit vectors, top-1 agreement, and perplexity of the real next tokens (labels).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from phm.trainer.fsutil import atomic_write_bytes, atomic_write_text

__all__ = ["Metrics", "ReportRow", "metrics", "perplexity", "write_report"]


@dataclass(frozen=True)
class Metrics:
    logit_cosine: float      # mean over positions of cos(ref, test)
    top1_agreement: float    # fraction of positions whose argmax equals the reference's
    perplexity: float        # exp(mean NLL of the real next tokens) under the variant
    answer_agreement: float | None = None  # VLMs: greedy answers on image+prompt pairs equal to FP32's


def perplexity(logits: np.ndarray, labels: np.ndarray) -> float:
    """exp(mean −log softmax(logits)[label]); logits (N, V), labels (N,).

    >>> round(perplexity(np.zeros((4, 10)), np.arange(4)), 6)   # uniform over 10 tokens
    10.0
    """
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(np.exp(-logp[np.arange(len(labels)), labels].mean()))


def metrics(ref: np.ndarray, test: np.ndarray, labels: np.ndarray) -> Metrics:
    """ref/test logits (N, V) for the same N positions; labels (N,) the real next tokens."""
    ref, test = ref.astype(np.float64).reshape(-1, ref.shape[-1]), test.astype(np.float64).reshape(-1, test.shape[-1])
    cos = (ref * test).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(test, axis=-1) + 1e-30)
    agree = (ref.argmax(-1) == test.argmax(-1)).mean()
    return Metrics(float(cos.mean()), float(agree), perplexity(test, labels.reshape(-1)))


@dataclass(frozen=True)
class ReportRow:
    model: str               # e.g. "dense", "PHM B=2"
    precision: str           # "fp32" | "fp16" | "int8"
    metrics: Metrics
    size_bytes: int


def _table(rows: list[ReportRow]) -> str:
    answers = any(r.metrics.answer_agreement is not None for r in rows)  # the column only for VLM reports
    lines = ["| model | precision | logit cosine | top-1 agreement | perplexity |"
             + (" answer agreement |" if answers else "") + " size (MB) |",
             "|---|---|---:|---:|---:|" + ("---:|" if answers else "") + "---:|"]
    for r in rows:
        m = r.metrics
        answer = "–" if m.answer_agreement is None else f"{m.answer_agreement:.2%}"
        lines.append(f"| {r.model} | {r.precision} | {m.logit_cosine:.4f} | {m.top1_agreement:.2%} | "
                     f"{m.perplexity:.3f} |" + (f" {answer} |" if answers else "") + f" {r.size_bytes / 1e6:.1f} |")
    return "\n".join(lines)


def _plot(rows: list[ReportRow]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    models = sorted({r.model for r in rows}, key=[r.model for r in rows].index)
    for model in models:
        sub = [r for r in rows if r.model == model]
        sizes = [r.size_bytes / 1e6 for r in sub]
        axes[0].plot(sizes, [r.metrics.top1_agreement * 100 for r in sub], "o-", label=model)
        axes[1].plot(sizes, [r.metrics.perplexity for r in sub], "o-", label=model)
        for r, s in zip(sub, sizes):
            axes[0].annotate(r.precision, (s, r.metrics.top1_agreement * 100), fontsize=8)
            axes[1].annotate(r.precision, (s, r.metrics.perplexity), fontsize=8)
    axes[0].set(xlabel="size (MB)", ylabel="top-1 agreement with FP32 (%)", title="agreement vs size")
    axes[1].set(xlabel="size (MB)", ylabel="perplexity (held-out text)", title="perplexity vs size")
    ppl = [r.metrics.perplexity for r in rows]
    if min(ppl) > 0 and max(ppl) > 10 * min(ppl):  # models of very different quality side by side
        axes[1].set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})  # no version stamp: reproducible
    plt.close(fig)
    return buf.getvalue()


def write_report(rows: list[ReportRow], out_dir: str | Path, title: str = "Accuracy report", note: str = "") -> Path:
    """Write report.md (table, `note` under it), report.png (plot) and report.json into out_dir;
    returns report.md."""
    if not rows:
        raise ValueError("no report rows to write")
    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / "report.png", _plot(rows))
    atomic_write_text(out_dir / "report.json", json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    body = f"# {title}\n\n{_table(rows)}\n\n" + (f"{note}\n\n" if note else "") + "![plot](report.png)\n"
    return atomic_write_text(out_dir / "report.md", body)
