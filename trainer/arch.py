"""Per-architecture table of MLP patterns: which modules of a Hugging Face model are PHM targets.

Matching is by pattern, never by hard-coded full names: each entry gives a regex (fullmatch on
the module path, any prefix allowed) for an MLP *block* with one group capturing the layer index,
plus the block's projections by role (gate/up/down or up/down) as child paths. Adding an
architecture means adding one row to `ARCH_TABLE`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

__all__ = ["ARCH_TABLE", "ATTENTION_QKV", "MLPBlock", "MLPPattern", "attention_qkv_modules", "find_mlp_blocks",
           "is_vision_module", "supported_model_types"]

ANY = r"(?:.*\.)?"  # any module prefix (model., model.language_model., bert., …)
SWIGLU = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
FC = {"up": "fc1", "down": "fc2"}


@dataclass(frozen=True)
class MLPPattern:
    tower: str                # "language" or "vision"
    block: str                # regex, fullmatch on the block's module path; group 1 = layer index
    kind: str                 # "swiglu": down(act(gate(x)) * up(x)); "plain": down(act(up(x)))
    roles: tuple              # ((role, child path), …)


def _p(tower, block, kind, roles):
    return MLPPattern(tower, ANY + block, kind, tuple(roles.items()))


_LLAMA_LM = _p("language", r"layers\.(\d+)\.mlp", "swiglu", SWIGLU)

ARCH_TABLE: dict[str, tuple[MLPPattern, ...]] = {
    "llama": (_LLAMA_LM,),
    "mistral": (_LLAMA_LM,),
    "qwen2": (_LLAMA_LM,),
    "qwen3": (_LLAMA_LM,),
    "qwen2_vl": (_p("vision", r"visual\.blocks\.(\d+)\.mlp", "plain", FC), _LLAMA_LM),
    "qwen2_5_vl": (_p("vision", r"visual\.blocks\.(\d+)\.mlp", "swiglu", SWIGLU), _LLAMA_LM),
    "idefics3": (_p("vision", r"vision_model\.encoder\.layers\.(\d+)\.mlp", "plain", FC), _LLAMA_LM),
    "smolvlm": (_p("vision", r"vision_model\.encoder\.layers\.(\d+)\.mlp", "plain", FC), _LLAMA_LM),
    # CLIP/SigLIP towers (encoder.layers.N) and DINOv2 towers (encoder.layer.N)
    "llava": (_p("vision", r"vision_tower\.(?:vision_model\.)?encoder\.layers?\.(\d+)\.mlp", "plain", FC), _LLAMA_LM),
    "gpt2": (_p("language", r"h\.(\d+)\.mlp", "plain", {"up": "c_fc", "down": "c_proj"}),),
    "bert": (_p("language", r"encoder\.layer\.(\d+)", "plain", {"up": "intermediate.dense", "down": "output.dense"}),),
    "vit": (_p("vision", r"encoder\.layer\.(\d+)", "plain", {"up": "intermediate.dense", "down": "output.dense"}),),
    "dinov2": (_p("vision", r"encoder\.layer\.(\d+)\.mlp", "plain", FC),),
}


# Attention q/k/v projections (LoRA targets) by leaf name, per architecture.
_QKV = ("q_proj", "k_proj", "v_proj")
ATTENTION_QKV: dict[str, tuple[str, ...]] = {
    **{t: _QKV for t in ("llama", "mistral", "qwen2", "qwen3", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm", "llava")},
    "gpt2": ("c_attn",),                     # fused q/k/v Conv1D
    **{t: ("query", "key", "value") for t in ("bert", "vit", "dinov2")},
}
# Roots of a VLM's vision tower (frozen while training; the tower of a vision-only model is the model).
VISION_TOWER = re.compile(r"(?:.*\.)?(?:visual|vision_model|vision_tower)(?:\..*)?")


def is_vision_module(name: str) -> bool:
    """Whether a module path lies in a VLM's vision tower."""
    return VISION_TOWER.fullmatch(name) is not None


def attention_qkv_modules(model: nn.Module, leaves: tuple[str, ...] | None = None) -> list[str]:
    """Full paths of the attention q/k/v linears outside any vision tower (LoRA targets)."""
    leaves = ATTENTION_QKV.get(_model_type(model), ()) if leaves is None else tuple(leaves)
    return [name for name, _ in model.named_modules()
            if name.rpartition(".")[2] in leaves and not is_vision_module(name)]


def supported_model_types() -> list[str]:
    return sorted(ARCH_TABLE)


@dataclass
class MLPBlock:
    """One MLP block found in a model: where it is and its projections' module paths by role."""

    name: str                 # module path of the block, e.g. "model.layers.3.mlp"
    tower: str
    layer: int
    kind: str
    activation: str
    projections: dict         # role -> full module path of the linear


def _activation(config, tower: str) -> str:
    sub = getattr(config, "vision_config", None) if tower == "vision" else None
    if sub is None and tower == "language" and hasattr(config, "get_text_config"):
        sub = config.get_text_config()
    for cfg in (sub, config):
        for attr in ("hidden_act", "activation_function"):
            value = getattr(cfg, attr, None) if cfg is not None else None
            if isinstance(value, str):
                return value
    return "unknown"


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise ValueError(f"{type(model).__name__} has no Hugging Face config.model_type; "
                         f"supported architectures: {', '.join(supported_model_types())}")
    return model_type


def find_mlp_blocks(model: nn.Module, towers=("language", "vision")) -> list[MLPBlock]:
    """Every MLP block of `model` in the given towers, in module order.

    Raises ValueError naming the supported architectures for an unknown model_type, and when a
    known architecture matches no block at all (the table is out of date for this model).
    """
    model_type = _model_type(model)
    if model_type not in ARCH_TABLE:
        raise ValueError(f"unsupported architecture {model_type!r}; supported: {', '.join(supported_model_types())}")
    patterns = [p for p in ARCH_TABLE[model_type] if p.tower in towers]
    modules = dict(model.named_modules())
    blocks = []
    for name in modules:
        for pat in patterns:
            match = re.fullmatch(pat.block, name)
            if not match:
                continue
            projections = {role: f"{name}.{child}" for role, child in pat.roles}
            if not all(path in modules for path in projections.values()):
                continue  # same path shape but not an MLP of this kind: skip, never guess
            blocks.append(MLPBlock(name, pat.tower, int(match.group(1)), pat.kind,
                                   _activation(model.config, pat.tower), projections))
            break
    if not blocks and patterns:
        raise ValueError(f"no MLP block of {model_type!r} matched the patterns "
                         f"{[p.block for p in patterns]} for towers {list(towers)}")
    return blocks
