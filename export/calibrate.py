"""INT8 calibrators: activation amax from observed values (min-max, percentile, entropy/KL) and
per-output-channel weight scales. Symmetric INT8: scale = amax / 127, q = clamp(round(x / scale)).

    cal = make_calibrator("entropy")
    for batch in data: cal.observe(activation)   # numpy or torch, any shape
    amax = cal.amax(); scale = amax / 127

The entropy method is TensorRT's (and torch-quantization's) KL search: a 2048-bin histogram of
|x|; for each candidate threshold i ≥ 128 bins the reference P = hist[:i] (outliers folded into
the last bin) is compared with Q = P merged into 128 levels and expanded back, and the i with the
smallest KL(P‖Q) wins.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EntropyCalibrator", "MinMaxCalibrator", "PercentileCalibrator", "make_calibrator",
           "per_channel_weight_scales", "quantize_symmetric"]

QMAX = 127


def _abs_np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.abs(np.asarray(x, dtype=np.float32)).ravel()


class MinMaxCalibrator:
    """amax = max |x| over everything observed."""

    def __init__(self):
        self._amax = 0.0

    def observe(self, x) -> None:
        a = _abs_np(x)
        if a.size:
            self._amax = max(self._amax, float(a.max()))

    def amax(self) -> float:
        return self._amax


class _HistogramCalibrator:
    """Running histogram of |x| on [0, range]; the range grows by re-binning when exceeded."""

    def __init__(self, bins: int = 2048):
        self.bins = bins
        self.hist = np.zeros(bins, dtype=np.float64)
        self.range = 0.0

    def observe(self, x) -> None:
        a = _abs_np(x)
        if not a.size:
            return
        top = float(a.max())
        if top > self.range:
            if self.range > 0 and self.hist.sum() > 0:  # re-bin old counts onto the wider range
                centers = (np.arange(self.bins) + 0.5) * (self.range / self.bins)
                self.hist, _ = np.histogram(centers, bins=self.bins, range=(0, top), weights=self.hist)
            self.range = top
        h, _ = np.histogram(a, bins=self.bins, range=(0, self.range or 1.0))
        self.hist += h

    def _edge(self, i: int) -> float:
        return (i / self.bins) * self.range


class PercentileCalibrator(_HistogramCalibrator):
    """amax = the given percentile of |x| (default 99.99)."""

    def __init__(self, percentile: float = 99.99, bins: int = 2048):
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        super().__init__(bins)
        self.percentile = percentile

    def amax(self) -> float:
        total = self.hist.sum()
        if total == 0:
            return 0.0
        cdf = np.cumsum(self.hist) / total
        i = int(np.searchsorted(cdf, self.percentile / 100.0))
        return self._edge(min(i + 1, self.bins))


class EntropyCalibrator(_HistogramCalibrator):
    """amax minimising KL(P‖Q) between the clipped reference and its 128-level quantisation."""

    def __init__(self, bins: int = 2048, levels: int = QMAX + 1):
        super().__init__(bins)
        self.levels = levels

    def amax(self) -> float:
        hist = self.hist
        if hist.sum() == 0:
            return 0.0
        best_i, best_kl = self.bins, np.inf
        for i in range(self.levels, self.bins + 1):
            p = hist[:i].copy()
            p[i - 1] += hist[i:].sum()           # clip outliers into the last bin
            nonzero = hist[:i] != 0
            q = np.zeros(i)
            for chunk in np.array_split(np.arange(i), self.levels):  # merge into `levels` bins
                nz = nonzero[chunk]
                if nz.any():
                    q[chunk[nz]] = hist[chunk].sum() / nz.sum()      # expand back over non-empty bins
            ps, qs = p.sum(), q.sum()
            if qs == 0:
                continue
            p, q = p / ps, q / qs
            mask = p > 0
            if np.any(q[mask] == 0):
                continue
            kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
            if kl < best_kl:
                best_kl, best_i = kl, i
        return self._edge(best_i)


def make_calibrator(method: str, **kwargs):
    table = {"minmax": MinMaxCalibrator, "percentile": PercentileCalibrator, "entropy": EntropyCalibrator}
    if method not in table:
        raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(table)}")
    return table[method](**kwargs)


def per_channel_weight_scales(weight: np.ndarray, axis: int = 0) -> np.ndarray:
    """Symmetric INT8 scale per output channel (`axis` indexes channels): max |w| / 127, ≥ tiny.

    >>> per_channel_weight_scales(np.array([[1.0, -2.54], [0.127, 0.0]])).astype(float).round(4).tolist()
    [0.02, 0.001]
    """
    w = np.abs(np.asarray(weight, dtype=np.float32))
    reduce = tuple(d for d in range(w.ndim) if d != axis % w.ndim)
    return np.maximum(w.max(axis=reduce) / QMAX, np.finfo(np.float32).tiny).astype(np.float32)


def quantize_symmetric(x: np.ndarray, scale) -> np.ndarray:
    """round(x / scale) clamped to [-127, 127], int8 (broadcasting `scale`)."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float32) / scale), -QMAX, QMAX).astype(np.int8)
