"""Check a rewritten graph against phm_config.json: every configured MLP block → which PHM node(s).

PHM nodes are matched to blocks by graph order and shape, not by names: in any topological order
all of layer i's MLP comes before layer i+1's (the residual stream runs through it), so walking the
PHM nodes in order and the blocks by layer assigns each block its nodes; the projections' (d_in,
d_out, B) must then equal what phm_config.json "layers" says for that block.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field

from .rewrite import PHMUnit

log = logging.getLogger(__name__)

__all__ = ["HF_ACTIVATIONS", "MLPStatus", "mlp_report", "not_rewritten"]

# Hugging Face activation names → spec.ACTIVATIONS (what a fused PHMFFN must carry).
HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                  "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu"}
_ROLE_ORDER = {"gate": 0, "up": 1, "down": 2}


@dataclass
class MLPStatus:
    """What became of one MLP block of the model in the exported graph."""

    block: str
    tower: str
    layer: int
    graph: str
    configured: bool          # phm_config.json has PHM layers for this block
    status: str               # "PHMFFN" | "PHMLinear" | "dense" | "not rewritten" | "mismatch"
    nodes: list = field(default_factory=list)
    num_bases: list = field(default_factory=list)
    detail: str = ""

    @property
    def rewritten(self) -> bool:
        return self.status in ("PHMFFN", "PHMLinear")

    def to_dict(self) -> dict:
        return asdict(self)


def _shape_key(projs) -> Counter:
    return Counter((d_in, d_out, b) for _, d_in, d_out, b in projs)


def mlp_report(graph: str, units: list[PHMUnit], blocks: list[dict], layers: list[dict],
               towers: tuple) -> list[MLPStatus]:
    """One MLPStatus per block of `towers`, in layer order; PHM units are consumed in order."""
    expected = {}
    for t in layers:
        expected.setdefault(t["block"], []).append((t["role"], t["in_features"], t["out_features"], t["num_bases"]))
    report, queue = [], list(units)
    for block in sorted((b for b in blocks if b["tower"] in towers), key=lambda b: b["layer"]):
        want = sorted(expected.get(block["name"], []), key=lambda p: _ROLE_ORDER[p[0]])
        status = MLPStatus(block["name"], block["tower"], block["layer"], graph, bool(want), "dense")
        if not want:
            status.detail = "dense, not rewritten (no PHM layers configured)"
            report.append(status)
            continue
        taken, count = [], 0
        while queue and count < len(want):
            taken.append(queue.pop(0))
            count += len(taken[-1].projections)
        got = [p for u in taken for p in u.projections]
        status.nodes = [u.name for u in taken]
        status.num_bases = [p[3] for p in want]
        if not taken:
            status.status, status.detail = "not rewritten", "no PHM node left for this block"
        elif _shape_key(got) != _shape_key(want):
            status.status = "mismatch"
            status.detail = f"PHM nodes carry {sorted(_shape_key(got).elements())}, config says {sorted(_shape_key(want).elements())}"
        elif len(taken) == 1 and taken[0].op == "PHMFFN":
            status.status = "PHMFFN"
            expect_act = HF_ACTIVATIONS.get(block.get("activation", ""))
            status.detail = f"{taken[0].mlp_type}, {taken[0].activation}"
            if expect_act is not None and expect_act != taken[0].activation:
                status.status = "mismatch"
                status.detail += f" but the model's activation is {block['activation']} ({expect_act})"
        else:
            status.status = "PHMLinear"
            status.detail = (f"{len(taken)} PHMLinear node(s), not fused (activation "
                             f"{block.get('activation')!r} or projections not fusable into PHMFFN)")
        report.append(status)
    if queue:
        report.append(MLPStatus("?", towers[0] if towers else "?", -1, graph, False, "mismatch",
                                [u.name for u in queue], detail="PHM nodes that no configured block accounts for"))
    return report


def not_rewritten(report: list[MLPStatus]) -> list[MLPStatus]:
    """Configured blocks that did not become PHM nodes (what --strict rejects)."""
    return [s for s in report if (s.configured and not s.rewritten) or s.status == "mismatch"]
