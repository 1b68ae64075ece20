"""Accuracy/size report of an export: metrics, a markdown table, a plot, a JSON record.

    rows = [ReportRow("PHM B=2", "int8", metrics(ref_logits, logits, labels), size_bytes), …]
    write_report(rows, out_dir)   # report.md, report.png, report.json (atomic writes)

Metrics compare a variant's logits with the FP32 model's on the same held-out tokens: mean cosine
of the logit vectors, top-1 agreement (with its binomial standard error), the mean KL divergence of
the variant's next-token distribution from FP32's (with its standard error over positions), and
perplexity of the real next tokens (labels). Encoders
(BERT, e.g. all-MiniLM-L6-v2) have no logits: their rows hold the cosine of the token hidden states
and of the mean-pooled sentence embeddings (`encoder_metrics`), and the table and plot show those.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from phm.common.fsutil import atomic_write_bytes, atomic_write_text

__all__ = ["Metrics", "ReportRow", "encoder_metrics", "metrics", "perplexity", "write_report"]


@dataclass(frozen=True)
class Metrics:
    logit_cosine: float      # mean over positions of cos(ref, test) (encoders: of the token hidden states)
    top1_agreement: float | None   # fraction of positions whose argmax equals the reference's (None: encoder)
    perplexity: float | None       # exp(mean NLL of the real next tokens) under the variant (None: encoder)
    answer_agreement: float | None = None  # VLMs: greedy answers on image+prompt pairs equal to FP32's
    embedding_cosine: float | None = None  # encoders: mean cos of the mean-pooled sentence embeddings
    kl: float | None = None          # mean KL(ref ‖ test) of the next-token distributions, nats per position
    kl_se: float | None = None       # its standard error over positions
    top1_se: float | None = None     # standard error of top1_agreement, √(p(1 − p)/N)


ROWS = 32  # positions per block: a vocabulary of 152k is 39 MB of float64 per block, not GBs for the whole text


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _kl(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) ‖ softmax(test)) per position, float64, ROWS positions at a time."""
    out = np.empty(len(ref))
    for i in range(0, len(ref), ROWS):
        lp, lq = _log_softmax(ref[i:i + ROWS]), _log_softmax(test[i:i + ROWS])
        out[i:i + ROWS] = (np.exp(lp) * (lp - lq)).sum(-1)
    return out


def _nll(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """−log softmax(logits)[label] per position, float64, computed ROWS positions at a time."""
    out = np.empty(len(labels))
    for i in range(0, len(labels), ROWS):
        lp = _log_softmax(logits[i:i + ROWS])
        out[i:i + ROWS] = -lp[np.arange(len(lp)), labels[i:i + ROWS]]
    return out


def perplexity(logits: np.ndarray, labels: np.ndarray) -> float:
    """exp(mean −log softmax(logits)[label]); logits (N, V), labels (N,).

    >>> round(perplexity(np.zeros((4, 10)), np.arange(4)), 6)   # uniform over 10 tokens
    10.0
    """
    return float(np.exp(_nll(logits, labels).mean()))


def metrics(ref: np.ndarray, test: np.ndarray, labels: np.ndarray) -> Metrics:
    """ref/test logits (N, V) for the same N positions; labels (N,) the real next tokens."""
    ref, test = ref.reshape(-1, ref.shape[-1]), test.reshape(-1, test.shape[-1])
    cos = np.concatenate([_cosines(ref[i:i + ROWS], test[i:i + ROWS]) for i in range(0, len(ref), ROWS)])
    agree = float((ref.argmax(-1) == test.argmax(-1)).mean())
    kl = _kl(ref, test)
    n = len(ref)
    return Metrics(float(cos.mean()), agree, perplexity(test, labels.reshape(-1)), kl=float(kl.mean()),
                   kl_se=float(kl.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
                   top1_se=float(np.sqrt(agree * (1 - agree) / n)))


def _cosines(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    ref, test = ref.astype(np.float64), test.astype(np.float64)
    return (ref * test).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(test, axis=-1) + 1e-30)


def encoder_metrics(ref: list[np.ndarray], test: list[np.ndarray]) -> Metrics:
    """ref/test: last hidden states (T, H) per sentence (no padding), the same sentences in order."""
    tokens = _cosines(np.concatenate(ref), np.concatenate(test))
    sentences = _cosines(np.stack([r.mean(0) for r in ref]), np.stack([t.mean(0) for t in test]))
    return Metrics(float(tokens.mean()), None, None, embedding_cosine=float(sentences.mean()))


@dataclass(frozen=True)
class ReportRow:
    model: str               # e.g. "dense", "PHM B=2"
    precision: str           # "fp32" | "fp16" | "int8"
    metrics: Metrics
    size_bytes: int


def _encoder(rows: list[ReportRow]) -> bool:
    return all(r.metrics.top1_agreement is None for r in rows)


def _table(rows: list[ReportRow]) -> str:
    if _encoder(rows):
        lines = ["| model | precision | sentence-embedding cosine | token hidden-state cosine | size (MB) |",
                 "|---|---|---:|---:|---:|"]
        lines += [f"| {r.model} | {r.precision} | {r.metrics.embedding_cosine:.4f} | {r.metrics.logit_cosine:.4f} | "
                  f"{r.size_bytes / 1e6:.1f} |" for r in rows]
        return "\n".join(lines)
    answers = any(r.metrics.answer_agreement is not None for r in rows)  # the column only for VLM reports
    lines = ["| model | precision | logit cosine | top-1 agreement | KL to FP32 (nats) | perplexity |"
             + (" answer agreement |" if answers else "") + " size (MB) |",
             "|---|---|---:|---:|---:|---:|" + ("---:|" if answers else "") + "---:|"]
    for r in rows:
        m = r.metrics
        answer = "–" if m.answer_agreement is None else f"{m.answer_agreement:.2%}"
        top1 = f"{m.top1_agreement:.2%}" + (f" ± {m.top1_se:.2%}" if m.top1_se else "")
        kl = "–" if m.kl is None else f"{m.kl:.4f}" + (f" ± {m.kl_se:.4f}" if m.kl_se else "")
        lines.append(f"| {r.model} | {r.precision} | {m.logit_cosine:.4f} | {top1} | {kl} | "
                     f"{m.perplexity:.3f} |" + (f" {answer} |" if answers else "") + f" {r.size_bytes / 1e6:.1f} |")
    return "\n".join(lines)


def _plot(rows: list[ReportRow]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    if _encoder(rows):
        series = [(lambda m: m.embedding_cosine, "sentence-embedding cosine to FP32", "embeddings vs size"),
                  (lambda m: m.logit_cosine, "token hidden-state cosine to FP32", "hidden states vs size")]
    else:
        series = [(lambda m: m.top1_agreement * 100, "top-1 agreement with FP32 (%)", "agreement vs size"),
                  (lambda m: m.perplexity, "perplexity (held-out text)", "perplexity vs size")]
    models = sorted({r.model for r in rows}, key=[r.model for r in rows].index)
    for model in models:
        sub = [r for r in rows if r.model == model]
        sizes = [r.size_bytes / 1e6 for r in sub]
        for ax, (value, _, _) in zip(axes, series):
            ax.plot(sizes, [value(r.metrics) for r in sub], "o-", label=model)
            for r, size in zip(sub, sizes):
                ax.annotate(r.precision, (size, value(r.metrics)), fontsize=8)
    for ax, (_, ylabel, title) in zip(axes, series):
        ax.set(xlabel="size (MB)", ylabel=ylabel, title=title)
    ppl = [r.metrics.perplexity for r in rows if r.metrics.perplexity is not None]
    if ppl and min(ppl) > 0 and max(ppl) > 10 * min(ppl):  # models of very different quality side by side
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
