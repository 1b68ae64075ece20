"""Which attention inputs make W8A8 lose accuracy? A per-tensor sweep on SmolLM2-135M (CPU, PyTorch).

    python benchmarks/int8_sensitivity.py [--tokens 512] [--skip 1 2 4 8] [--threads 1]

The same arithmetic as `phm-export --int8` on an attention projection, simulated in PyTorch
(fake quantization, no smoothing): the input of q/k/v (one shared tensor per layer) and of o_proj
gets one per-tensor scale from the export's percentile calibrator (`phm.export.calibrate`) over
the shipped calibration prompts, the weights per-output-channel INT8 scales. Each of the 60
tensors is quantized alone and scored against the float model on the chatterbot held-out windows
the INT8 report uses (`phm.export.int8.heldout_windows`): top-1 agreement and KL(float ‖ quantized).
Then everything is quantized except the K most sensitive tensors (by KL), for each `--skip` K:
would leaving a few layers in float (what partial quantization does) recover the accuracy?
docs/int8.md reads the result. No smoothing: it measures where the plain per-tensor scales hurt.

    python benchmarks/int8_sensitivity.py --tokens 2048 --smooth 0.5 0.6 0.75

instead quantizes all 60 inputs after SmoothQuant with each fixed α (x / s into the quantizer,
diag(s)·W into the INT8 weight, as the export does), the activation scale by the percentile
calibrator or by the clip (30 … 100 % of the max) with the smallest output error on the calibration
tokens; results in benchmarks/results/int8_smoothing_smollm2_cpu.json.

    python benchmarks/int8_sensitivity.py --tokens 2048 --rotate

instead quantizes the inputs rotated as `phm-export --int8` does by default (`phm.export.rotate`: x·Q
into the quantizer, Qᵀ·W into the INT8 weight, no smoothing), percentile and mse scales, all 60 /
q/k/v only / o_proj only; results in benchmarks/results/int8_rotation_smollm2_cpu.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from phm.export import rotate
from phm.export.calib_data import load_calibration_data
from phm.export.calibrate import QMAX, make_calibrator, per_channel_weight_scales, quantize_symmetric
from phm.export.int8 import CALIB_TOKENS, heldout_windows, text_to_ids
from phm.export.quantize import CLIP_RATIOS
from phm.trainer import load
from phm.trainer.models import load_tokenizer, smollm2_dir

ROOT = Path(__file__).resolve().parents[1]


def _fake_quant(x: torch.Tensor, scale) -> torch.Tensor:
    """The export's rounding (`quantize_symmetric`), dequantized back to float."""
    q = quantize_symmetric(x.detach().numpy(), scale).astype(np.float32) * scale
    return torch.from_numpy(q)


class Sweep:
    """The model, its attention input groups, their calibrated scales, and the float reference."""

    def __init__(self, tokens: int):
        d = smollm2_dir()
        self.model, tok = load(d).eval(), load_tokenizer(d)
        self.windows = [torch.tensor(w) for w in heldout_windows(tok, 0, tokens)]
        self.groups = {}
        for i, layer in enumerate(self.model.model.layers):
            a = layer.self_attn
            self.groups[f"{i}.qkv"] = [a.q_proj, a.k_proj, a.v_proj]   # one shared input tensor
            self.groups[f"{i}.o"] = [a.o_proj]
        self.weights = {id(m): m.weight.data.clone() for mods in self.groups.values() for m in mods}
        # per-output-channel INT8 weights, as the export stores them (nn.Linear weight: (out, in))
        self.quantized = {k: _fake_quant(w, per_channel_weight_scales(w.numpy(), axis=0)[:, None])
                          for k, w in self.weights.items()}
        self.prompts = [text_to_ids(s.text, tok, 0)[:CALIB_TOKENS] for s in load_calibration_data()]
        self.scales = self._calibrate(self.prompts)
        self.smooth = {k: None for k in self.groups}  # per-channel divisor of each input (SmoothQuant)
        self.rotation = {k: None for k in self.groups}  # Q of each input (rotate.py)
        with torch.no_grad():
            self.reference = [self.model(input_ids=w).logits[0, :-1] for w in self.windows]

    def _calibrate(self, prompts: list[list[int]]) -> dict[str, float]:
        cals = {k: make_calibrator("percentile") for k in self.groups}
        hooks = [mods[0].register_forward_pre_hook(
            lambda m, args, k=k: cals[k].observe(args[0].reshape(-1, args[0].shape[-1]).numpy()))
            for k, mods in self.groups.items()]
        with torch.no_grad():
            for ids in prompts:
                self.model(input_ids=torch.tensor([ids]))
        for h in hooks:
            h.remove()
        return {k: max(c.amax(), 1e-8) / QMAX for k, c in cals.items()}

    def _inputs(self) -> dict[str, torch.Tensor]:
        """Each group's input on the calibration prompts (float model), (tokens, K)."""
        rows = {k: [] for k in self.groups}
        hooks = [mods[0].register_forward_pre_hook(
            lambda m, args, k=k: rows[k].append(args[0].reshape(-1, args[0].shape[-1]).clone()))
            for k, mods in self.groups.items()]
        with torch.no_grad():
            for ids in self.prompts:
                self.model(input_ids=torch.tensor([ids]))
        for h in hooks:
            h.remove()
        return {k: torch.cat(v) for k, v in rows.items()}

    def use_smoothing(self, alpha: float, clip: str) -> None:
        """Every group smoothed as `phm-export --int8` smooths (x / s into the Q, diag(s)·W into the INT8
        weight, s_j = max|x_j|^α / max|W_j|^(1−α); α fixed here instead of searched per tensor), then
        the activation scale: the export's percentile calibrator on x / s (`clip="percentile"`), or
        (`clip="mse"`) the amax among 30 %…100 % of max |x / s| with the smallest output error of the
        quantized linears on the calibration tokens (the export's "mse")."""
        xs = self._inputs()
        for k, mods in self.groups.items():
            w = torch.cat([self.weights[id(m)] for m in mods])            # (out, in)
            s = (xs[k].abs().amax(0).clamp(min=1e-5) ** alpha / w.abs().amax(0).clamp(min=1e-5) ** (1 - alpha))
            self.smooth[k] = s
            for m in mods:
                ws = self.weights[id(m)] * s[None, :]
                self.quantized[id(m)] = _fake_quant(ws, per_channel_weight_scales(ws.numpy(), axis=0)[:, None])
            self.scales[k] = self._scale(xs[k] / s, w * s[None, :], torch.cat([self.quantized[id(m)] for m in mods]),
                                         clip)

    def use_rotation(self, clip: str) -> None:
        """Every group rotated as `phm-export --int8` rotates (x·Q into the quantizer, Qᵀ·W into the
        INT8 weight: here nn.Linear's (out, in) weight W·Q, stored as Q(W·Q)·Qᵀ so that the hook's
        Q(x·Q)·Qᵀ times it is Q(x·Q)·Q(W·Q)ᵀ), no smoothing, then the activation scale as above."""
        xs = self._inputs()
        for k, mods in self.groups.items():
            q = torch.from_numpy(rotate.matrix(mods[0].weight.shape[1])).float()
            self.rotation[k], self.smooth[k] = q, None
            for m in mods:
                wr = self.weights[id(m)] @ q
                self.quantized[id(m)] = _fake_quant(wr, per_channel_weight_scales(wr.numpy(), axis=0)[:, None]) @ q.T
            w = torch.cat([self.weights[id(m)] for m in mods]) @ q
            self.scales[k] = self._scale(xs[k] @ q, w, torch.cat([self.quantized[id(m)] for m in mods]) @ q, clip)

    @staticmethod
    def _scale(x: torch.Tensor, w: torch.Tensor, wq: torch.Tensor, clip: str) -> float:
        """Per-tensor scale of the quantizer's input x (tokens, K) for weights w / wq (out, K): the
        percentile calibrator, or the clip among CLIP_RATIOS × max|x| with the least output error."""
        if clip == "percentile":
            cal = make_calibrator("percentile")
            cal.observe(x.numpy())
            return max(cal.amax(), 1e-8) / QMAX
        ref = x @ w.T
        top = float(x.abs().max())
        errors = {float(r): float(((_fake_quant(x, float(top * r / QMAX)) @ wq.T - ref) ** 2).sum())
                  for r in CLIP_RATIOS}
        return top * min(errors, key=errors.get) / QMAX

    def _quantize_input(self, k: str, x: torch.Tensor) -> torch.Tensor:
        if self.rotation[k] is not None:
            return _fake_quant(x @ self.rotation[k], self.scales[k]) @ self.rotation[k].T
        return _fake_quant(x if self.smooth[k] is None else x / self.smooth[k], self.scales[k])

    def score(self, keys: list[str]) -> tuple[float, float]:
        """(top-1 agreement, mean KL) with the tensors in `keys` quantized, the rest float."""
        hooks = []
        for k in keys:
            for m in self.groups[k]:
                m.weight.data = self.quantized[id(m)]
                hooks.append(m.register_forward_pre_hook(lambda m, args, k=k: (self._quantize_input(k, args[0]),)))
        try:
            with torch.no_grad():
                outs = [self.model(input_ids=w).logits[0, :-1] for w in self.windows]
        finally:
            for h in hooks:
                h.remove()
            for mods in self.groups.values():
                for m in mods:
                    m.weight.data = self.weights[id(m)]
        agree = torch.cat([(o.argmax(-1) == r.argmax(-1)) for o, r in zip(outs, self.reference)]).float().mean()
        kl = np.mean([torch.nn.functional.kl_div(o.log_softmax(-1), r.log_softmax(-1), log_target=True,
                                                 reduction="batchmean").item() for o, r in zip(outs, self.reference)])
        return float(agree), float(kl)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512, help="held-out tokens scored")
    ap.add_argument("--skip", type=int, nargs="+", default=[1, 2, 4, 8], help="K most sensitive tensors left float")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "int8_sensitivity_smollm2_cpu.json")
    ap.add_argument("--smooth", type=float, nargs="+", default=None, metavar="ALPHA",
                    help="instead of the per-tensor sweep: all 60 inputs quantized after SmoothQuant with each "
                         "fixed α, activation scale by percentile and by output-MSE clipping")
    ap.add_argument("--rotate", action="store_true",
                    help="instead of the per-tensor sweep: the inputs rotated as the export does (rotate.py), "
                         "percentile and output-MSE scales")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console()
    sweep = Sweep(args.tokens)
    keys = list(sweep.groups)
    everything = sweep.score(keys)
    if args.smooth:
        return _smoothing(sweep, everything, args, console)
    if args.rotate:
        return _rotation(sweep, everything, args, console)
    with console.status("scoring one tensor at a time (60 forward passes over the held-out windows)"):
        alone = {k: sweep.score([k]) for k in keys}
    order = sorted(keys, key=lambda k: -alone[k][1])
    skipped = {n: sweep.score([k for k in keys if k not in order[:n]]) for n in args.skip}

    table = Table(title=f"W8A8 attention inputs, SmolLM2-135M, {sum(len(r) for r in sweep.reference)} positions")
    for col in ("quantized", "top-1 agreement", "KL"):
        table.add_column(col)
    table.add_row("all 60", f"{100 * everything[0]:.2f} %", f"{everything[1]:.4f}")
    for k in order[:8]:
        table.add_row(f"only {k}", f"{100 * alone[k][0]:.2f} %", f"{alone[k][1]:.4f}")
    for n, (agree, kl) in skipped.items():
        table.add_row(f"all but the {n} worst", f"{100 * agree:.2f} %", f"{kl:.4f}")
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"positions": sum(len(r) for r in sweep.reference), "all": everything,
                                     "alone": alone, "order": order,
                                     "all_but_worst": {str(n): v for n, v in skipped.items()}}, indent=2) + "\n")
    return 0


def _smoothing(sweep: Sweep, plain: tuple[float, float], args, console: Console) -> int:
    positions = sum(len(r) for r in sweep.reference)
    table = Table(title=f"W8A8 attention inputs with SmoothQuant, SmolLM2-135M, {positions} positions")
    for col in ("α", "activation scale", "top-1 agreement", "KL", "quantized"):
        table.add_column(col)
    keys = list(sweep.groups)
    parts = {"all 60": keys, "q/k/v inputs only": [k for k in keys if k.endswith(".qkv")],
             "o_proj inputs only": [k for k in keys if k.endswith(".o")]}
    # the per-part rows of the plain scales: which input kind smoothing helps and which it hurts
    rows = [{"alpha": None, "clip": "percentile", "quantized": part, "top1": agree, "kl": kl}
            for part, (agree, kl) in [("all 60", plain)] + [(p, sweep.score(parts[p])) for p in list(parts)[1:]]]
    for alpha in args.smooth:
        for clip in ("percentile", "mse"):
            sweep.use_smoothing(alpha, clip)
            for part in (parts if alpha == args.smooth[0] and clip == "percentile" else ["all 60"]):
                agree, kl = sweep.score(parts[part])
                rows.append({"alpha": alpha, "clip": clip, "quantized": part, "top1": agree, "kl": kl})
    for r in rows:
        table.add_row("none" if r["alpha"] is None else f"{r['alpha']:g}", r["clip"], f"{100 * r['top1']:.2f} %",
                      f"{r['kl']:.4f}", r["quantized"])
    console.print(table)
    path = args.json.with_name(args.json.name.replace("sensitivity", "smoothing"))
    path.write_text(json.dumps({"positions": positions, "rows": rows}, indent=2) + "\n")
    return 0


def _rotation(sweep: Sweep, plain: tuple[float, float], args, console: Console) -> int:
    positions = sum(len(r) for r in sweep.reference)
    keys = list(sweep.groups)
    parts = {"all 60": keys, "q/k/v inputs only": [k for k in keys if k.endswith(".qkv")],
             "o_proj inputs only": [k for k in keys if k.endswith(".o")]}
    rows = [{"rotated": False, "clip": "percentile", "quantized": part, "top1": agree, "kl": kl}
            for part, (agree, kl) in [("all 60", plain)] + [(p, sweep.score(parts[p])) for p in list(parts)[1:]]]
    for clip in ("percentile", "mse"):
        sweep.use_rotation(clip)
        for part in parts:
            agree, kl = sweep.score(parts[part])
            rows.append({"rotated": True, "clip": clip, "quantized": part, "top1": agree, "kl": kl})
    table = Table(title=f"W8A8 attention inputs, rotated (x·Q), SmolLM2-135M, {positions} positions")
    for col in ("rotation", "activation scale", "top-1 agreement", "KL", "quantized"):
        table.add_column(col)
    for r in rows:
        table.add_row("Q" if r["rotated"] else "none", r["clip"], f"{100 * r['top1']:.2f} %", f"{r['kl']:.4f}",
                      r["quantized"])
    console.print(table)
    path = args.json.with_name(args.json.name.replace("sensitivity", "rotation"))
    path.write_text(json.dumps({"positions": positions, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
