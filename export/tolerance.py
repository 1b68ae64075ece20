"""Per-output tolerances of the polygraphy checks in commands.sh: derived from the precision and each
output's own magnitude, and for INT8 from the error the export measured, so that a bound neither
fails a correct deep model nor passes a wrong one.

Polygraphy counts an element (or, with --check-error-stat, a statistic) as a mismatch only when
both |out − ref| > atol and |out − ref| / |ref| > rtol. Float graphs are checked element by element:

    atol(o) = REL[precision, backend] · scale(o),   rtol = REL[precision, backend]
    scale(o) = max |ref(o)| over the reference iterations

so an output whose values reach 11 (a 24-layer KV cache) gets 11× the bound of one that stays near
1, instead of one absolute number for all. REL is the relative error each precision is allowed
against the fp32 PyTorch reference: fp32 graphs differ from PyTorch by reassociation only (measured
~1e-6–2e-5 of the scale; bound 1e-4), fp16 graphs by fp16 rounding through every layer (bound 5e-2).

INT8 graphs are checked on the median error (a few logits move by more than the rest): the export
runs its ONNX Runtime graph on the reference inputs, measures per output the median absolute and
relative error against the reference, and writes MARGIN × those as the bound (with a floor of
INT8_FLOOR of the scale, for outputs INT8 does not change). The measured values go into the
manifest beside the bounds. A graph compared with another model's reference fails every one of
these checks (tests/export/test_tolerance.py is the negative control).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

__all__ = ["INT8_FLOOR", "MARGIN", "REL", "float_tolerances", "int8_tolerances", "measured_median_errors",
           "scales"]

REL = {("fp32", "onnxrt"): 1e-4, ("fp32", "trt"): 1e-3, ("fp16", "onnxrt"): 5e-2, ("fp16", "trt"): 5e-2}
MARGIN = 4.0        # INT8 bound = MARGIN × the median error this export measured
INT8_FLOOR = 1e-4   # … but at least this fraction of the output's scale (absolute) and this relative error


def scales(outputs: list[OrderedDict]) -> dict[str, float]:
    """{output: max |value| over the iterations} of the float outputs of a reference."""
    out: dict[str, float] = {}
    for iteration in outputs:
        for name, value in iteration.items():
            value = np.asarray(value)
            if value.dtype.kind == "f" and value.size:
                out[name] = max(out.get(name, 0.0), float(np.max(np.abs(value))))
    return out


def _round(x: float) -> float:
    return float(f"{x:.3g}")


def float_tolerances(outputs: list[OrderedDict], precision: str, backend: str) -> dict[str, list[float]]:
    """{output: [atol, rtol]} for an element-wise check of a float (fp32/fp16) graph."""
    rel = REL[(precision, backend)]
    return {name: [_round(rel * max(scale, 1e-6)), rel] for name, scale in scales(outputs).items()}


def measured_median_errors(got: list[OrderedDict], ref: list[OrderedDict]) -> dict[str, list[float]]:
    """{output: [median |got − ref|, median |got − ref| / |ref|]}, the larger over the iterations (the
    statistics polygraphy's median check computes)."""
    out: dict[str, list[float]] = {}
    for g, r in zip(got, ref):
        for name, want in r.items():
            if np.asarray(want).dtype.kind != "f" or name not in g:
                continue
            want = np.asarray(want, np.float64)
            diff = np.abs(np.asarray(g[name], np.float64) - want)
            rel = diff / np.maximum(np.abs(want), np.finfo(np.float32).tiny)
            prev = out.get(name, [0.0, 0.0])
            out[name] = [max(prev[0], float(np.median(diff))), max(prev[1], float(np.median(rel)))]
    return out


def int8_tolerances(measured: dict[str, list[float]], outputs: list[OrderedDict]) -> dict[str, list[float]]:
    """{output: [atol, rtol]} for the median check of an INT8 graph: MARGIN × the measured medians."""
    scale = scales(outputs)
    return {name: [_round(max(MARGIN * abs_err, INT8_FLOOR * scale.get(name, 1.0))),
                   _round(max(MARGIN * rel_err, INT8_FLOOR))] for name, (abs_err, rel_err) in measured.items()}
