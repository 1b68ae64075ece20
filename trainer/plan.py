"""Training memory plan from the config alone: what one `phm-train` run holds at its peak.

    plan = plan_training("Qwen2-7B/", PHMConfig(num_bases=2), DistillConfig(batch_size=8, max_length=512))
    print(plan.table())                # bytes per item and per stage, the peak, the verdict
    plan.refusal()                     # one line with the numbers when it does not fit device_gib

The model is built on the meta device (trainer.empty_model: no weight is read), PHM is injected
and LoRA added as `distill` does, and one training forward runs on meta tensors with autograd's
saved-tensor hooks counting what the backward would keep: the activations are the model's own,
measured, not a formula (attention counted as eager attention computes it, with its probabilities
saved; SDPA's fused kernels, which the trainer runs, saved between 8 % less and 0.3 % more on the
test architectures). The rest is what the trainer holds, as it holds it:

  weights          every frozen parameter in `base_dtype` (the dense teacher weights stay beside the cores)
  trainable        PHM cores and biases, LoRA (fp32 masters)
  gradients        one fp32 per trainable parameter
  AdamW            two fp32 moments per trainable parameter
  DDP buckets      data-parallel DDP: its gradient buckets, one more fp32 per trainable parameter
  FSDP gather      data-parallel FSDP2: two transformer layers' parameters gathered whole (the one
                   computing, the one prefetched)
  activations      tensors the student's forward and the loss save for the backward (the process's
                   rows of the batch × max_length; with gradient checkpointing: each layer's input and
                   what is saved outside the layers)
  recompute        gradient checkpointing: one layer's activations, rebuilt in the backward
  teacher outputs  the teacher's logits (or last hidden state) and, with hidden_weight > 0, every
                   layer's hidden state, kept for the loss
  temporaries      estimated, not counted: two logits-sized tensors (the loss's gradient and its
                   input's) and twice one layer's saved activations (the backward's working set)
  calibration      --init calibrated: Σ x xᵀ in float64 for every PHM linear's input, all at once
  local stage      --local-epochs: the student's and teacher's layer inputs and the layer targets
                   of every cached batch (3 × batches × batch × length × hidden, fp32), held on the
                   device (local_cache "host" moves them to host memory: then one batch's worth)

Stages run one after the other (calibrated init, local stage, KD loop), so the peak is the largest
stage plus what every stage holds (weights, trainable). The plan is per device for `world_size`
data-parallel processes (parallel.py): with FSDP2 the weights, trainable parameters, gradients and
AdamW state are divided by it in the KD loop (the init stages run before sharding, on the whole
model), and every process computes batch_size / world_size rows. Text batches (image batches add
the vision tower's activations). Measured against a real run
(benchmarks/bench_train_plan.py) it is 15 % above the peak RSS when malloc returns freed tensors to
the OS (MALLOC_MMAP_THRESHOLD_=65536) and 16 % below it with glibc's defaults, whose heap keeps
freed blocks resident: hence the near-limit margin.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import empty_model
from .distill import (DistillConfig, _add_lora, _forward, _loss, _master_dtypes, _objective, _recon_term,
                      _recon_terms, _teacher_forward, _trainable)
from .inject import PHMConfig, inject_phm, phm_wrappers
from .parallel import layer_stacks

__all__ = ["TrainPlan", "plan_training", "step_bytes"]

GiB = 1024 ** 3
NEAR_LIMIT = 0.8


@dataclass(frozen=True)
class TrainPlan:
    items: dict             # name → bytes (module doc)
    stages: dict            # stage → bytes held during it (items it adds to weights + trainable)
    params: dict            # total / trainable / frozen parameter counts
    batch: tuple            # (batch_size, max_length) the activations were measured for (per device)
    device_gib: float | None = None
    world: tuple = (1, "")  # (data-parallel processes, "ddp" | "fsdp")

    @property
    def peak(self) -> int:
        return max(self.stages.values())

    @property
    def verdict(self) -> str:
        if self.device_gib is None:
            return "no device size given"
        fraction = self.peak / (self.device_gib * GiB)
        return "does-not-fit" if fraction > 1 else "near-limit" if fraction > NEAR_LIMIT else "fits"

    def table(self) -> str:
        where = "one device" if self.world[0] == 1 else f"per device of {self.world[0]}, {self.world[1].upper()}"
        lines = [f"training memory plan ({where}; batch {self.batch[0]} × {self.batch[1]} tokens; "
                 f"{self.params['total'] / 1e9:.3f} B parameters, {self.params['trainable'] / 1e6:.1f} M trainable)",
                 f"{'item':<18}{'GiB':>10}"]
        lines += [f"{name:<18}{value / GiB:>10.3f}" for name, value in self.items.items() if value]
        lines.append(f"{'stage':<18}{'GiB':>10}")
        lines += [f"{name:<18}{value / GiB:>10.3f}" for name, value in self.stages.items()]
        device = "" if self.device_gib is None else f" of {self.device_gib:g} GiB"
        lines.append(f"peak {self.peak / GiB:.2f} GiB{device}: {self.verdict}")
        return "\n".join(lines)

    def refusal(self) -> str:
        worst = max(self.stages, key=self.stages.get)
        top = sorted(self.items.items(), key=lambda kv: -kv[1])[:3]
        return (f"the run needs {self.peak / GiB:.1f} GiB at its peak ({worst}) and the device has "
                f"{self.device_gib:g} GiB; largest items: "
                + ", ".join(f"{name} {value / GiB:.1f} GiB" for name, value in top)
                + " (phm-train --plan shows all)")


def _nbytes(t) -> int:
    if isinstance(t, torch.Tensor):
        return t.numel() * t.element_size()
    if isinstance(t, (tuple, list)):
        return sum(_nbytes(x) for x in t)
    return 0


def step_bytes(model, objective: str, config: DistillConfig, device: str = "meta") -> tuple[int, int, int]:
    """(bytes of the teacher's logits or last hidden state, of all its outputs kept for the loss, and
    of what the student's forward and the loss save for the backward) of one training step of
    `model` (PHM injected, LoRA added, trainable set) on a (batch_size, max_length) text batch:
    every wrapper mid-fade (both paths computed and the reconstruction recorded, the stage-A worst
    case). On meta tensors for the plan; on real ones the same count. Each transformer layer's input
    is counted too (saved by its first operation anyway; kept by gradient checkpointing's replay)."""
    hidden = config.hidden_weight > 0
    shape = (config.batch_size, config.max_length)
    ids = {"input_ids": torch.zeros(shape, dtype=torch.int64, device=device)}
    if objective == "logits":  # decoders without a KV cache read the mask (or inspect position ids on meta)
        ids["attention_mask"] = torch.ones(shape, dtype=torch.int64, device=device)
    teacher = _teacher_forward(model, ids, objective, hidden)
    for _, w in phm_wrappers(model):
        w.lam, w.record_recon = 0.5, True
    saved: dict[int, int] = {}

    alive = []  # every counted tensor is held until the count is done: a freed storage's address may be reused

    def pack(t):  # one entry per storage: views of one tensor are one allocation
        storage = t.untyped_storage()
        saved[storage._cdata] = max(saved.get(storage._cdata, 0), storage.nbytes())
        alive.append(t)
        return t

    def layer_input(_module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        if isinstance(x, torch.Tensor) and torch.is_grad_enabled():
            pack(x)

    hooks = [layer.register_forward_pre_hook(layer_input, with_kwargs=True) for layer in layer_stacks(model)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            student = _forward(model, ids, objective, hidden)
            recon = _recon_term(_recon_terms(w for _, w in phm_wrappers(model)), config, stage_b=False)
            _loss(student, teacher, ids, objective, config, config.kd_weight, recon,
                  objective == "logits" and config.ce_weight > 0)
    finally:
        for hook in hooks:
            hook.remove()
    return _nbytes(teacher[0]), _nbytes(teacher), sum(saved.values())


def _temporaries(teacher_main: int, activations: int, layers: int) -> int:
    return 2 * teacher_main + 2 * activations // max(layers, 1)


def _calibration_bytes(targets) -> int:
    return sum(t.in_features ** 2 * 8 for t in targets)


def _local_bytes(targets, config: DistillConfig, batches: int) -> int:
    if not config.local_epochs:
        return 0
    widths = {}  # per tower: the width of its layers' inputs (the MLP's gate/up/fc input)
    for t in targets:
        widths[t.tower] = max(widths.get(t.tower, 0), t.in_features if t.role != "down" else 0)
    count = 1 if config.local_cache == "host" else config.local_batches or batches  # host: one batch on the device
    return sum(3 * count * config.batch_size * config.max_length * width * 4 for width in widths.values())


def _layer_bytes(model) -> int:
    """Parameter bytes of the largest transformer layer (FSDP2's unit)."""
    return max((sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layer_stacks(model)),
               default=0)


def plan_training(model_dir: str | Path, phm: PHMConfig, config: DistillConfig, device_gib: float | None = None,
                  data_batches: int = 64, world_size: int = 1) -> TrainPlan:
    """The plan of `phm-train model_dir` with these settings (module doc), per device of `world_size`
    data-parallel processes (`config.parallel`). `data_batches`: batches of the training data, what
    --local-batches 0 caches."""
    if world_size < 1 or config.batch_size % world_size:
        raise ValueError(f"batch_size {config.batch_size} (the global batch) is not divisible by world size {world_size}")
    model = empty_model(model_dir).to("meta")
    # meta tensors have no fused attention kernel: count eager attention, which saves the attention
    # probabilities (b × heads × T² per layer); SDPA saves about as much or less (module doc)
    model.set_attn_implementation("eager")
    targets = inject_phm(model, dataclasses.replace(phm, init="random"))  # the init does not change memory
    objective = _objective(model, config)
    model = _add_lora(model, config)
    named = _trainable(model)
    _master_dtypes(model, config)
    trainable = sum(p.numel() for _, p in named)
    params = {id(p): p for p in model.parameters()}.values()  # each shared (tied) parameter once
    total = sum(p.numel() for p in params)
    frozen_bytes = sum(p.numel() * p.element_size() for p in params if not p.requires_grad)
    per_device = dataclasses.replace(config, batch_size=config.batch_size // world_size)
    main, teacher, activations = step_bytes(model, objective, per_device)
    layers = len({(t.tower, t.layer) for t in targets})
    recompute = 0
    if config.gradient_checkpointing:
        from .recompute import checkpoint_layers

        checkpoint_layers(model)
        _, _, kept = step_bytes(model, objective, per_device)
        recompute, activations = max(activations - kept, 0) // max(layers, 1), kept
    fsdp = world_size > 1 and config.parallel == "fsdp"
    shard = world_size if fsdp else 1
    items = {"weights": frozen_bytes, "trainable": trainable * 4, "gradients": trainable * 4 // shard,
             "AdamW": trainable * 8 // shard,
             "DDP buckets": trainable * 4 if world_size > 1 and not fsdp else 0,
             "FSDP gather": 2 * _layer_bytes(model) if fsdp else 0,
             "activations": activations, "recompute": recompute, "teacher outputs": teacher,
             "temporaries": _temporaries(main, recompute or activations, 1 if recompute else layers),
             "calibration": _calibration_bytes(targets) if config.calibrate_init else 0,
             "local stage": _local_bytes(targets, config, data_batches)}
    held = items["weights"] + items["trainable"]  # the init stages run before FSDP2 shards the model
    stages = {"calibrated init": held + items["calibration"],
              "local stage": held + items["local stage"],
              "KD step": held // shard + sum(items[k] for k in ("gradients", "AdamW", "DDP buckets", "FSDP gather",
                                                                "activations", "recompute", "teacher outputs",
                                                                "temporaries"))}
    return TrainPlan(items, stages, {"total": total, "trainable": trainable, "frozen": total - trainable},
                     (per_device.batch_size, config.max_length), device_gib,
                     (world_size, config.parallel if world_size > 1 else ""))
