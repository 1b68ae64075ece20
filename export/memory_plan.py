"""Memory planning for a deployment target: will the engine fit, before anything is built?

    plan = plan_memory(ModelFootprint.from_model(model), precision="fp16", target="orin-nano",
                       context=2048, batch=1)
    plan.verdict      # "fits" | "near-limit" | "does-not-fit"
    plan.summary()    # one line with the numbers

Budget = weights (per precision) + KV cache for the context + activations/workspace + runtime
overhead (CUDA context, TensorRT, the process), against the memory the device can give the model.
On Jetson the GPU shares system RAM with the OS, so the usable part is the total minus an OS
reserve. Numbers are estimates with stated assumptions, not measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["DEVICES", "DeviceSpec", "MemoryPlan", "ModelFootprint", "plan_memory"]

GiB = 1024 ** 3
NEAR_LIMIT = 0.85  # warn above this fraction of usable memory


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    total_gib: float          # physical memory the GPU can address (unified on Jetson)
    os_reserve_gib: float     # kept by the OS / desktop, never available to the model
    bandwidth_gbs: float
    sm: str

    @property
    def usable_bytes(self) -> int:
        return int((self.total_gib - self.os_reserve_gib) * GiB)


# JetPack 6 (TensorRT 10.3, CUDA 12.6, sm_87). Largest memory variant of each module.
DEVICES = {
    "orin-nano": DeviceSpec("Jetson Orin Nano 8GB", 8.0, 1.5, 68.0, "sm_87"),
    "orin-nx": DeviceSpec("Jetson Orin NX 16GB", 16.0, 2.0, 102.4, "sm_87"),
    "agx-orin": DeviceSpec("Jetson AGX Orin 64GB", 64.0, 3.0, 204.8, "sm_87"),
    "desktop": DeviceSpec("desktop GPU (24 GiB assumed; override with device_gib)", 24.0, 0.5, 1000.0, "sm_90"),
}

# Bytes per weight element by precision and weight kind. INT8 = Q/DQ dense matmuls + INT8 PHM
# cores (per-channel scales, negligible); embeddings, norms and biases stay fp16.
_WEIGHT_BYTES = {
    "fp32": {"linear": 4, "phm": 4, "embedding": 4, "other": 4},
    "fp16": {"linear": 2, "phm": 2, "embedding": 2, "other": 2},
    "int8": {"linear": 1, "phm": 1, "embedding": 2, "other": 2},
    "int4": {"linear": 0.5, "phm": 0.5, "embedding": 2, "other": 2},
}
_ACT_BYTES = {"fp32": 4, "fp16": 2, "int8": 2, "int4": 2}
RUNTIME_OVERHEAD = int(0.75 * GiB)  # CUDA context + TensorRT runtime + Python process (JetPack 6)


@dataclass(frozen=True)
class ModelFootprint:
    """Parameter counts by kind and the shape facts that size the KV cache and activations."""

    linear_params: int
    phm_params: int
    embedding_params: int
    other_params: int
    num_layers: int
    kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int

    @classmethod
    def from_model(cls, model: nn.Module) -> "ModelFootprint":
        from phm.trainer import PHMLinear

        counts = {"linear": 0, "phm": 0, "embedding": 0, "other": 0}
        seen = set()
        for module in model.modules():
            kind = ("phm" if isinstance(module, PHMLinear) else "linear" if isinstance(module, nn.Linear)
                    else "embedding" if isinstance(module, nn.Embedding) else "other")
            for p in module.parameters(recurse=False):
                if id(p) not in seen:  # tied weights count once
                    seen.add(id(p))
                    counts[kind] += p.numel()
        text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head")
        hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd")
        return cls(counts["linear"], counts["phm"], counts["embedding"], counts["other"],
                   getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer"),
                   getattr(text, "num_key_value_heads", None) or heads,
                   getattr(text, "head_dim", None) or hidden // heads, hidden,
                   getattr(text, "intermediate_size", None) or 4 * hidden, text.vocab_size)

    def weight_bytes(self, precision: str) -> int:
        b = _WEIGHT_BYTES[precision]
        return int(self.linear_params * b["linear"] + self.phm_params * b["phm"]
                   + self.embedding_params * b["embedding"] + self.other_params * b["other"])


@dataclass
class MemoryPlan:
    target: str
    device: DeviceSpec
    precision: str
    context: int
    batch: int
    weights: int
    kv_cache: int
    activations: int
    overhead: int
    usable: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.overhead

    @property
    def fraction(self) -> float:
        return self.total / self.usable

    @property
    def verdict(self) -> str:
        return "does-not-fit" if self.fraction > 1 else "near-limit" if self.fraction > NEAR_LIMIT else "fits"

    def rows(self) -> list[tuple[str, float]]:
        return [("weights", self.weights / GiB), (f"KV cache ({self.context} tok × {self.batch})", self.kv_cache / GiB),
                ("activations + workspace", self.activations / GiB), ("runtime overhead", self.overhead / GiB),
                ("total", self.total / GiB), (f"usable on {self.device.name}", self.usable / GiB)]

    def to_dict(self) -> dict:
        """What manifest.json records (bytes; GiB = 1024³)."""
        return {"target": self.target, "device": self.device.name, "precision": self.precision,
                "context": self.context, "batch": self.batch, "verdict": self.verdict,
                "fraction": round(self.fraction, 4),
                "bytes": {"weights": self.weights, "kv_cache": self.kv_cache, "activations": self.activations,
                          "overhead": self.overhead, "total": self.total, "usable": self.usable}}

    def refusal(self) -> str:
        """One line for an export that cannot fit."""
        return (f"does not fit on {self.device.name} ({self.precision}, context {self.context}, batch {self.batch}): "
                f"needs {self.total / GiB:.2f} GiB (weights {self.weights / GiB:.2f}, KV cache {self.kv_cache / GiB:.2f}, "
                f"activations + workspace {self.activations / GiB:.2f}, runtime {self.overhead / GiB:.2f}), device has "
                f"{self.usable / GiB:.2f} GiB usable; try a lower precision, a shorter --context or a larger --target")

    def summary(self) -> str:
        return (f"{self.device.name}, {self.precision}: needs {self.total / GiB:.2f} GiB (weights {self.weights / GiB:.2f}, "
                f"KV cache {self.kv_cache / GiB:.2f}, activations {self.activations / GiB:.2f}, overhead "
                f"{self.overhead / GiB:.2f}) of {self.usable / GiB:.2f} GiB usable ({self.fraction:.0%}): {self.verdict}")


def plan_memory(fp: ModelFootprint, precision: str = "fp16", target: str = "orin-nano", context: int = 2048,
                batch: int = 1, device_gib: float | None = None, workspace_gib: float = 0.5) -> MemoryPlan:
    """Estimate the deployment footprint on `target`.

    KV cache: 2 (K and V) × layers × kv_heads × head_dim × context × batch × activation bytes.
    Activations: the largest live set of one prefill step over the full context (hidden, MLP
    intermediate ×2 for SwiGLU, fp32 logits of the last position) plus the TensorRT workspace.
    """
    if target not in DEVICES:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(DEVICES)}")
    if precision not in _WEIGHT_BYTES:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(_WEIGHT_BYTES)}")
    if context < 1 or batch < 1:
        raise ValueError(f"context and batch must be ≥ 1, got context={context}, batch={batch}")
    device = DEVICES[target]
    if device_gib is not None:
        if device_gib <= device.os_reserve_gib:
            raise ValueError(f"device memory {device_gib:g} GiB must exceed the OS reserve of {target} "
                             f"({device.os_reserve_gib:g} GiB)")
        device = DeviceSpec(device.name.split(" (")[0] + f" ({device_gib:g} GiB)", device_gib, device.os_reserve_gib,
                            device.bandwidth_gbs, device.sm)
    act = _ACT_BYTES[precision]
    kv = 2 * fp.num_layers * fp.kv_heads * fp.head_dim * context * batch * act
    live = batch * context * (2 * fp.hidden_size + 2 * fp.intermediate_size) * act + batch * fp.vocab_size * 4
    return MemoryPlan(target, device, precision, context, batch, fp.weight_bytes(precision), kv,
                      int(live + workspace_gib * GiB), RUNTIME_OVERHEAD, device.usable_bytes)
