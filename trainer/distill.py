"""Progressive PHM distillation: the `distill(model, data, config)` verb.

    targets = inject_phm(model, PHMConfig())                 # dense+PHM wrappers, λ = 0
    model, history = distill(model, batches, DistillConfig(steps=600), state_dir=out / "train_state")
    save_phm_checkpoint(model, phm_config, targets, out)     # model is PHM-only, LoRA merged

Stages (docs/design.md §2; every schedule value is a pure function of the step, so resume is exact):
  0. optional activation-weighted core init on the first `calib_batches` batches (calibrate.py);
  1. LoRA (peft) on the attention q/k/v outside the vision tower; everything except PHM cores/biases
     and LoRA is frozen (so the vision tower is);
  A. λ_l ramps 0 → 1 per MLP block, staggered (schedule.py); loss = KD + CE + reconstruction;
  B. PHM-only fine-tune with KD (+ CE): λ = 1 everywhere, which is exactly the PHM-only model
     (tested); the dense weights stay in memory only as the teacher's, since the teacher is the
     same model with λ = 0 (no second copy of the weights);
  end: dense weights dropped (drop_dense), LoRA merged into the attention weights (peft
     merge_and_unload).
The teacher is the same model with λ = 0 and LoRA disabled, run under no_grad on the same batch.
The model stays in eval mode throughout (dropout off: the target is the teacher's exact function).

Training state (every `checkpoint_every` steps and at the end) goes to `state_dir` atomically:
state.safetensors (trainable tensors, AdamW moments, RNG) + state.json (step, configs, log).
Never pickle.

Scale (docs/trainer.md § Scale): `base_dtype` keeps the frozen weights in bf16/fp16 while cores,
PHM biases and LoRA stay fp32 masters; `gradient_checkpointing` recomputes each transformer layer in
the backward (recompute.py); under `torchrun` the run is data-parallel over the processes with DDP
or FSDP2 (`parallel`, parallel.py), every number the same as one process on the whole batch.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from phm.common.fsutil import atomic_dir

from .arch import attention_qkv_modules, find_mlp_blocks
from .data import to_device
from .inject import drop_dense, phm_wrappers, teacher_mode
from .losses import causal_ce_loss, embedding_kd_loss, hidden_kd_loss, kd_loss, local_total
from .local import LOCAL_CACHES, LOCAL_INPUTS, local_distill
from .monitor import Monitor
from .parallel import PARALLEL_MODES, World, full_tensor, like, unshard, world_from_env, wrap
from .schedule import LambdaSchedule, linear_ramp, lr_factor

__all__ = ["DistillConfig", "NonFiniteError", "distill", "STATE_DIR_NAME"]

log = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1
STATE_DIR_NAME = "train_state"
OBJECTIVES = ("auto", "logits", "embedding")
BASE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Fields that may differ between a run and its resumption (they do not change the result on CPU).
_RESUME_FREE = ("device", "amp", "checkpoint_every", "log_every", "progress", "gradient_checkpointing", "parallel",
                "tensorboard", "local_cache")


@dataclass
class DistillConfig:
    """One distillation run. Serialised as distill_config.json (with format_version)."""

    steps: int = 300                 # optimizer steps in all (stage A + stage B)
    batch_size: int = 16
    max_length: int = 128            # tokens per text sample (per packed window with pack)
    pack: bool = False               # causal LMs: pack the texts into full max_length windows (TokenBatches.packed)
    stream: bool = False             # read text files as the run goes instead of tokenizing all up front (stream.py)
    holdout: float = 0.0             # fraction of the data held out by hash (never trained on; evaluated)
    chat_template: bool = False      # each text as one user turn of the tokenizer's chat template
    target_size: float | None = None  # budget mode (budget.py): B per block for this fraction of the parameters
    target_gb: float | None = None   # … or for this many GB of 16-bit weights
    group_by_length: bool = True     # batch texts of about one length: ~4x fewer computed positions on short utterances
    stage_b_fraction: float = 0.2    # last part: PHM-only fine-tune (λ = 1)
    schedule: str = "progressive"    # "progressive" (staggered λ ramps) or "abrupt" (λ = 1 from step 0: ablation)
    fade_fraction: float = 0.7       # paper: λ fades in over the first 70 % of stage A
    ramp_width: float = 0.5          # each block's ramp, as a fraction of the fade window (1 = all together)
    order: str = "bottom_up"         # which blocks hand over first
    objective: str = "auto"          # "logits" (LM KD on logits), "embedding" (encoders), auto = by LM head
    kd_temperature: float = 4.0      # paper: 4
    kd_weight: float = 1.0           # paper ramps 0 → 0.7 with CE beside it; fidelity runs use 1 and no CE
    kd_weight_start: float | None = None  # ramp from this to kd_weight over the fade; None = constant
    ce_weight: float = 0.0           # next-token CE on the data (needs labels = the text itself)
    label_smoothing: float = 0.1     # paper: 0.1 (CE only)
    hidden_weight: float = 1.0       # per-token normalised MSE of every layer's hidden state, mean over layers
    recon_weight: float = 0.05       # mean over PHM linears of ‖phm(x) − W x‖² / ‖W x‖² (stage A only)
    lr: float = 1e-4                 # LoRA and PHM biases
    core_lr: float = 2e-3            # PHM cores
    weight_decay: float = 0.0
    warmup_steps: int = 10
    grad_clip: float = 1.0
    lora_r: int = 8                  # paper: r = 8, α = 16 on q/k/v; 0 disables LoRA
    lora_alpha: int = 16
    calibrate_init: bool = True      # activation-weighted ridge init of the cores (docs/design.md §1)
    calib_batches: int = 32
    calib_ridge: float = 1e-2
    local_epochs: int = 0            # layer-wise local distillation before the KD loop (local.py); 0 = off
    local_batches: int = 64          # training batches the local stage caches activations of (0 = all)
    local_lr: float = 3e-3
    local_inputs: str = "student"    # each layer's input in the local stage: "student" (PHM below) | "teacher"
    local_cache: str = "auto"        # local stage's cached activations: "device" | "host" | "auto" (host if a GPU lacks room)
    seed: int = 0
    device: str = "cpu"
    amp: bool = True                 # bf16 autocast on CUDA (ignored on CPU)
    base_dtype: str = "float32"      # frozen (teacher) weights: float32 | bfloat16 | float16; trainables stay fp32
    gradient_checkpointing: bool = False  # recompute each transformer layer in the backward (recompute.py)
    parallel: str = "ddp"            # under torchrun: "ddp" (replicated model) or "fsdp" (FSDP2-sharded)
    eval_every: int = 0              # evaluate the PHM-only student on the held-out data every N steps (0: off)
    eval_texts: int = 96             # held-out texts (or image samples) evaluated (0: all)
    keep_best: bool = True           # with evaluation: the run ends on the best-evaluated weights
    checkpoint_every: int = 100      # steps between training-state checkpoints (0: only at the end)
    log_every: int = 10
    tensorboard: bool = True         # TensorBoard scalars of the losses and evaluations (when tensorboard is installed)
    progress: bool = True            # tqdm bar

    def __post_init__(self):
        ints = dict(steps=(0, None), batch_size=(1, None), max_length=(2, None), warmup_steps=(0, None),
                    lora_r=(0, None), lora_alpha=(1, None), calib_batches=(1, None),
                    local_epochs=(0, None), local_batches=(0, None), checkpoint_every=(0, None),
                    log_every=(1, None), eval_every=(0, None), eval_texts=(0, None))
        for name, (lo, _) in ints.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
        if self.target_size is not None and self.target_gb is not None:
            raise ValueError("target_size and target_gb conflict: give one of them")
        if self.target_size is not None and not (isinstance(self.target_size, (int, float)) and 0 < self.target_size <= 1):
            raise ValueError(f"target_size must be in (0, 1], got {self.target_size!r}")
        if self.target_gb is not None and not (isinstance(self.target_gb, (int, float)) and self.target_gb > 0):
            raise ValueError(f"target_gb must be > 0, got {self.target_gb!r}")
        if not 0.0 <= self.holdout <= 0.9:
            raise ValueError(f"holdout must be in [0, 0.9], got {self.holdout}")
        for name in ("stage_b_fraction", "fade_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.ramp_width <= 1.0:
            raise ValueError(f"ramp_width must be in (0, 1], got {self.ramp_width}")
        if self.schedule not in ("progressive", "abrupt"):
            raise ValueError(f"schedule must be 'progressive' or 'abrupt', got {self.schedule!r}")
        if self.local_cache not in LOCAL_CACHES:
            raise ValueError(f"local_cache must be one of {', '.join(LOCAL_CACHES)}, got {self.local_cache!r}")
        if self.local_inputs not in LOCAL_INPUTS:
            raise ValueError(f"local_inputs must be 'student' or 'teacher', got {self.local_inputs!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.kd_temperature <= 0:
            raise ValueError(f"kd_temperature must be > 0, got {self.kd_temperature}")
        for name in ("kd_weight", "ce_weight", "hidden_weight", "recon_weight", "lr", "core_lr", "weight_decay",
                     "grad_clip", "calib_ridge", "local_lr", "kd_weight_start", "kd_temperature"):
            value = getattr(self, name)
            if value is None and name == "kd_weight_start":
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.base_dtype not in BASE_DTYPES:
            raise ValueError(f"base_dtype must be one of {', '.join(BASE_DTYPES)}, got {self.base_dtype!r}")
        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f"parallel must be one of {', '.join(PARALLEL_MODES)}, got {self.parallel!r}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        LambdaSchedule(0, 1, self.fade_fraction, self.ramp_width, self.order)  # validates order

    @property
    def stage_a_steps(self) -> int:
        return self.steps - int(round(self.stage_b_fraction * self.steps))

    def to_dict(self) -> dict:
        return {"format_version": STATE_FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "DistillConfig":
        data = dict(data)
        if data.pop("format_version", None) != STATE_FORMAT_VERSION:
            raise ValueError("distill config format_version is not supported")
        data.setdefault("group_by_length", False)  # runs saved before the field batched in plain shuffled order
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ---------------------------------------------------------------- model plumbing


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "merge_and_unload")


def _canonical(name: str) -> str:
    """Parameter name independent of the peft wrapper and of the dense/PHM stage."""
    return name.removeprefix("base_model.model.").replace(".phm.", ".")


def _add_lora(model: nn.Module, config: DistillConfig) -> nn.Module:
    if config.lora_r == 0:
        return model
    targets = attention_qkv_modules(model)
    if not targets:
        log.warning("no attention q/k/v module found for LoRA; training without it")
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=targets,
                      fan_in_fan_out=type(model.get_submodule(targets[0])).__name__ == "Conv1D")
    return get_peft_model(model, lora)


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Freeze everything except PHM cores/biases and LoRA weights; (canonical name, param), sorted."""
    out = []
    for name, p in model.named_parameters():
        keep = ".phm." in name or "lora_" in name or name.endswith(".cores") or _is_bare_phm_bias(model, name)
        p.requires_grad_(keep)
        if keep:
            out.append((_canonical(name), p))
    return sorted(out, key=lambda kv: kv[0])


def _is_bare_phm_bias(model, name: str) -> bool:
    if not name.endswith(".bias"):
        return False
    from .hypercomplex import PHMLinear

    return isinstance(model.get_submodule(name.rpartition(".")[0]), PHMLinear)


# AdamW moves every core entry by about core_lr per step, whatever the entry's size: a step above
# this fraction of the cores' RMS is warned about. The defaults take ~1.5 % steps on SmolLM2 (core
# RMS 0.14); a 0.63 B Qwen2-shaped model's cores (RMS 0.022) take 9 % steps at the same core_lr, and
# its loss climbs and swings while λ fades in (docs/trainer.md § λ fade).
CORE_STEP_WARN = 0.05


def core_step_ratio(model: nn.Module, core_lr: float) -> tuple[float, float] | None:
    """(core_lr / the median RMS of the PHM cores, that RMS), or None without cores."""
    rms = sorted(float(p.detach().float().pow(2).mean().sqrt()) for n, p in model.named_parameters()
                 if n.endswith(".cores") and p.device.type != "meta")
    if not rms:
        return None
    median = rms[len(rms) // 2]
    return (core_lr / median if median > 0 else float("inf")), median


def _check_core_step(model: nn.Module, config: DistillConfig) -> None:
    """Warn about large relative core steps where λ fades (the abrupt schedule has no fade: the
    MiniLM recipe's tuned 3e-3 is an 8 % step there, and its best measured setting)."""
    if config.schedule == "abrupt":
        return
    found = core_step_ratio(model, config.core_lr)
    if found is not None and found[0] > CORE_STEP_WARN:
        ratio, rms = found
        log.warning("core_lr %g is %.0f %% of the PHM cores' RMS (%.3g) per AdamW step: on a model with weights "
                    "this small the cores move far while λ fades in and the loss can climb and swing; "
                    "--core-lr %.1e keeps the ~1.5 %% steps the defaults take on SmolLM2", config.core_lr,
                    100 * ratio, rms, 0.015 * rms)


def _param_groups(named: list, config: DistillConfig) -> list[dict]:
    cores = [p for n, p in named if n.endswith(".cores")]
    rest = [p for n, p in named if not n.endswith(".cores")]
    return [{"params": cores, "base_lr": config.core_lr, "lr": config.core_lr},
            {"params": rest, "base_lr": config.lr, "lr": config.lr}]


def _block_groups(model: nn.Module) -> dict[str, int]:
    """Wrapper path -> index of its MLP block in forward order (the λ schedule's groups)."""
    wrappers = [name for name, _ in phm_wrappers(model)]
    blocks = find_mlp_blocks(model, ("language", "vision"))
    owner = {path: b.name for b in blocks for path in b.projections.values()}
    order = list(dict.fromkeys(owner.get(w, w) for w in wrappers))
    return {w: order.index(owner.get(w, w)) for w in wrappers}


def _objective(model: nn.Module, config: DistillConfig) -> str:
    if config.objective != "auto":
        return config.objective
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return "logits" if head is not None else "embedding"


# ---------------------------------------------------------------- training state


def _save_state(state_dir: Path, step: int, named: list, optimizer, config: DistillConfig, history: list,
                extra: dict, world: World = World(), extra_tensors: dict | None = None) -> None:
    """Every rank calls it (FSDP2 shards are gathered into whole tensors); rank 0 writes."""
    tensors = {f"param/{n}": full_tensor(p.detach()).cpu().contiguous() for n, p in named}
    tensors.update({k: v.contiguous() for k, v in (extra_tensors or {}).items()})
    for n, p in named:
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"optim/{n}/{key}"] = full_tensor(torch.as_tensor(value).detach()).cpu().contiguous()
    if not world.main:
        return
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    doc = {"format_version": STATE_FORMAT_VERSION, "step": step, "distill": config.to_dict(), "history": history,
           "rng_python": list(random.getstate()[1]), **extra}
    with atomic_dir(state_dir, overwrite=True) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"), metadata={"format": "pt"})
        (tmp / "state.json").write_text(json.dumps(doc, indent=1) + "\n")


def read_state(state_dir: Path) -> dict:
    path = Path(state_dir) / "state.json"
    if not path.is_file():
        raise ValueError(f"no training state to resume in {state_dir}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if doc.get("format_version") != STATE_FORMAT_VERSION:
        raise ValueError(f"{path}: training-state format_version {doc.get('format_version')!r} is not supported")
    return doc


def _check_resumable(saved: dict, config: DistillConfig) -> None:
    mine, theirs = config.to_dict(), DistillConfig.from_dict(saved).to_dict()
    diff = sorted(k for k in mine if k not in _RESUME_FREE and mine[k] != theirs.get(k))
    if diff:
        raise ValueError("conflicting settings with the run being resumed: "
                         + ", ".join(f"{k}={mine[k]!r} (saved {theirs.get(k)!r})" for k in diff))


def _load_state(state_dir: Path, named: list, optimizer) -> dict:
    """Restore the parameters, AdamW and RNG; returns the state's tensors (the monitor reads its own)."""
    tensors = load_file(str(Path(state_dir) / "state.safetensors"))
    with torch.no_grad():
        for n, p in named:
            key = f"param/{n}"
            if key not in tensors:
                raise ValueError(f"training state in {state_dir} has no tensor for {n}: different model or PHM config")
            p.copy_(like(p, tensors[key]))
            # AdamW's moments are laid out as their parameter (an FSDP2 shard); its step count is a scalar
            state = {k.rpartition("/")[2]: like(p, v) if v.dim() else v for k, v in tensors.items()
                     if k.startswith(f"optim/{n}/")}
            if state:
                optimizer.state[p] = state
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
    return tensors


# ---------------------------------------------------------------- the verb


def _forward(model, batch, objective, hidden: bool):
    """(logits or last hidden state, hidden states of every layer or None). No KV cache: training
    reads none, and gradient checkpointing's replay of a layer would append to it a second time."""
    extra = {"use_cache": False} if getattr(getattr(model, "config", None), "use_cache", None) is not None else {}
    out = model(**batch, **extra, output_hidden_states=True) if hidden else model(**batch, **extra)
    main = out.logits if objective == "logits" else out.last_hidden_state
    return main, (out.hidden_states[1:] if hidden else None)


def _teacher_forward(model, batch, objective, hidden: bool):
    """_forward of the teacher: the same model with λ = 0 and LoRA disabled, without gradients."""
    with torch.no_grad(), teacher_mode(model):
        if _is_peft(model):
            with model.disable_adapter():
                return _forward(model, batch, objective, hidden)
        return _forward(model, batch, objective, hidden)


def _recon_terms(wrappers) -> list:
    """The (error, reference) sums the wrappers recorded in this forward (unused towers record none)."""
    return [w.recon_terms for w in wrappers if w.recon_terms is not None]


def _recon_term(terms, config, stage_b: bool, total=local_total):
    """The mean reconstruction error of `_recon_terms` (None: not a stage-A loss term); each
    wrapper's error over the whole batch (`total` sums its ‖W x‖² over the processes)."""
    if not terms or config.recon_weight <= 0 or stage_b:
        return None
    return torch.stack([err / total(ref).clamp_min(1e-8) for err, ref in terms]).mean()


def _loss(student, teacher, batch, objective, config, kd_w, recon, use_ce, total=local_total):
    """Weighted loss terms; student/teacher are _forward's (main, hidden states) pairs; `total` sums
    the normalisers over data-parallel processes (losses.py)."""
    (s_main, s_hid), (t_main, t_hid) = student, teacher
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones(s_main.shape[:2], device=s_main.device)
    parts = {}
    if objective == "logits":
        parts["kd"] = kd_w * kd_loss(s_main, t_main, config.kd_temperature, mask, total)
        if use_ce:
            parts["ce"] = config.ce_weight * causal_ce_loss(s_main, batch["input_ids"], mask, config.label_smoothing,
                                                            total)
    else:
        from .models import mean_pool

        parts["kd"] = kd_w * embedding_kd_loss(mean_pool(s_main, mask), mean_pool(t_main, mask), total)
    if s_hid is not None:
        # mask must match the hidden states' token axis (VLM vision tokens are part of the sequence)
        layer_losses = [hidden_kd_loss(s, t, mask if s.shape[:2] == mask.shape else None, total)
                        for s, t in zip(s_hid, t_hid)]
        parts["hidden"] = config.hidden_weight * torch.stack(layer_losses).mean()
    if recon is not None:
        parts["recon"] = config.recon_weight * recon
    return sum(parts.values()), parts


class _Student(nn.Module):
    """The student's (and the teacher's) forward as one module, the unit DDP and FSDP2 wrap. The
    student's outputs include the reconstruction sums the wrappers record: DDP finds the parameters
    that get a gradient by walking a forward's outputs, and a wrapper at λ = 0 reaches the loss only
    through its reconstruction term. The teacher goes through the same module so that FSDP2 gathers
    the weights it reads."""

    def __init__(self, model: nn.Module, objective: str, hidden: bool):
        super().__init__()
        self.model, self.objective, self.hidden = model, objective, hidden
        self._wrappers = [w for _, w in phm_wrappers(model)]

    def forward(self, batch: dict, teacher: bool = False):
        if teacher:
            return *_teacher_forward(self.model, batch, self.objective, self.hidden), []
        main, hidden = _forward(self.model, batch, self.objective, self.hidden)
        return main, hidden, _recon_terms(self._wrappers)


class NonFiniteError(ValueError):
    """A loss or gradient became nan/inf: the run stops before the update that would spread it."""


@dataclass
class _Run:
    """What every step of one distill run reads and updates."""

    model: nn.Module
    engine: nn.Module                # the student's forward: _Student(model), in DDP or sharded by FSDP2
    world: World
    config: DistillConfig
    device: torch.device
    objective: str
    groups: dict                     # wrapper name → schedule group (block order)
    schedule: LambdaSchedule
    named: list                      # trainable (name, parameter)
    optimizer: torch.optim.Optimizer
    wrappers: dict                   # name → PHMResidualLinear
    state_dir: Path | None
    state_extra: dict
    history: list
    monitor: Monitor
    start: int = 0
    stage_b: bool = False

    @property
    def stage(self) -> str:
        return "B" if self.stage_b else "A"

    def save(self, step: int, stage: str | None = None) -> None:
        doc, tensors = self.monitor.state()
        _save_state(self.state_dir, step, self.named, self.optimizer, self.config, self.history,
                    {**self.state_extra, **doc, "stage": stage or self.stage}, self.world, tensors)


def _saved_state(state_dir: Path | None, resume: bool, config: DistillConfig) -> dict | None:
    if not resume:
        return None
    if state_dir is None:
        raise ValueError("resume needs a state_dir")
    saved = read_state(state_dir)
    _check_resumable(saved["distill"], config)
    return saved


def _master_dtypes(model: nn.Module, config: DistillConfig) -> None:
    """Frozen floating-point parameters in `base_dtype`, trainable ones (cores, PHM biases, LoRA) fp32."""
    base = BASE_DTYPES[config.base_dtype]
    for p in model.parameters():
        if p.is_floating_point():
            want = torch.float32 if p.requires_grad else base
            if p.dtype != want:
                p.data = p.data.to(want)


def _start(model: nn.Module, data, config: DistillConfig, device, state_dir, state_extra, saved,
           world: World, monitor_args: tuple) -> _Run:
    """Initialise (calibrated cores, local stage) on a fresh run, add LoRA, set the dtypes, wrap the
    model for data parallelism, build the optimizer, and restore the saved state on a resumed one.
    The init runs on every process on the whole batches (identical results, nothing to exchange)."""
    objective = _objective(model, config)
    groups = _block_groups(model)
    schedule = LambdaSchedule(config.stage_a_steps, max(groups.values()) + 1, config.fade_fraction,
                              config.ramp_width, config.order, abrupt=config.schedule == "abrupt")
    history: list[dict] = []
    if config.calibrate_init and saved is None:
        from .calibrate import calibrate_phm

        count = min(config.calib_batches, len(data))
        calibrate_phm(model, (to_device(data.batch(i), device) for i in range(count)), config.calib_ridge,
                      progress=config.progress and world.main, total=count)
    if config.local_epochs and saved is None:
        count = min(config.local_batches or len(data), len(data))
        history.extend(local_distill(model, [to_device(data.batch(i), device) for i in range(count)], config.local_epochs,
                                     config.local_lr, config.seed, config.progress and world.main,
                                     config.local_inputs, config.local_cache))
    model = _add_lora(model, config)
    model.eval()
    _trainable(model)  # requires_grad decides the dtypes and what DDP/FSDP2 reduce
    _master_dtypes(model, config)
    if world.main:
        _check_core_step(model, config)
    if config.gradient_checkpointing:
        from .recompute import checkpoint_layers

        checkpoint_layers(model)
    engine = wrap(_Student(model, objective, config.hidden_weight > 0), world, config.parallel, device)
    named = _trainable(model)  # after wrap: FSDP2 replaces every parameter by its shard
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(_param_groups(named, config), weight_decay=config.weight_decay, **fused)
    wrappers = {n.removeprefix("base_model.model."): w for n, w in phm_wrappers(model)}
    eval_data, tensorboard_dir = monitor_args
    monitor = Monitor(eval_data, objective, config.eval_every, config.keep_best,
                      tensorboard_dir if config.tensorboard else None, world.main)
    run = _Run(model, engine, world, config, device, objective, groups, schedule, named, optimizer, wrappers,
               state_dir, state_extra, history, monitor)
    if saved is not None:
        run.start, run.history = saved["step"], saved["history"]
        run.stage_b = run.start >= config.stage_a_steps
        monitor.load(saved, _load_state(state_dir, named, optimizer))
        log.info("resumed from step %d", run.start)
    elif monitor.every:  # the initialised student, before any step
        run.history.append(monitor.evaluate(engine, wrappers.values(), named, device, 0))
    return run


def _step(run: _Run, data, step: int, bar) -> tuple[torch.Tensor, dict, list, float]:
    """One optimizer step (λ of every wrapper, lr, teacher and student forward, loss, update);
    NonFiniteError before the update when the loss or the gradient norm is not finite."""
    config = run.config
    if step >= config.stage_a_steps and not run.stage_b:
        run.stage_b = True
        log.info("step %d: stage B, PHM-only student (λ = 1; dense weights serve only as the teacher)", step)
    lams = [run.schedule.lam(run.groups[name], step) for name in run.wrappers]
    for w, lam in zip(run.wrappers.values(), lams):
        w.recon_terms = None
        w.lam, w.record_recon = lam, config.recon_weight > 0 and not run.stage_b
    kd_w = config.kd_weight if config.kd_weight_start is None else config.kd_weight_start + (
        config.kd_weight - config.kd_weight_start) * linear_ramp(
            step, 0, max(1.0, run.schedule.fade_fraction * config.stage_a_steps))
    factor = lr_factor(step, config.steps, config.warmup_steps)
    for g in run.optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor
    world = run.world
    batch = to_device(world.shard(data.batch(step)), run.device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.amp and run.device.type == "cuda")
    with amp:
        *teacher, _ = run.engine(batch, teacher=True)
        *student, terms = run.engine(batch)
        recon = _recon_term(terms, config, run.stage_b, world.total)
        use_ce = run.objective == "logits" and config.ce_weight > 0
        loss, parts = _loss(student, teacher, batch, run.objective, config, kd_w, recon, use_ce, world.total)
    run.optimizer.zero_grad(set_to_none=True)
    # each process's loss is its share of the whole batch's; DDP/FSDP2 average the gradients, so × N
    (loss * world.size if world.size > 1 else loss).backward()
    # max_norm inf only measures; one finite check of loss and gradient norm before the update
    norm = full_tensor(torch.nn.utils.clip_grad_norm_([p for _, p in run.named], config.grad_clip or math.inf))
    if world.size > 1:  # the logged numbers: sums over the processes, i.e. the whole batch's
        summed = world.total(torch.stack([loss.detach().float()] + [v.detach().float() for v in parts.values()]))
        loss, parts = summed[0], dict(zip(parts, summed[1:]))
    if not (torch.isfinite(loss) and torch.isfinite(norm)):
        _stop_non_finite(run, step, loss, norm, bar)
    run.optimizer.step()
    return loss, parts, lams, factor


def _stop_non_finite(run: _Run, step: int, loss: torch.Tensor, norm: torch.Tensor, bar) -> None:
    if run.state_dir is not None and step > run.start:  # the weights are still those after `step` steps
        run.save(step)
    if bar is not None:
        bar.close()  # the error line must start a line of its own
    kept = f"; the last good state (step {step}) is in {run.state_dir}" if run.state_dir is not None and step else ""
    raise NonFiniteError(f"training stopped at step {step + 1}: non-finite "
                         f"{'loss' if not torch.isfinite(loss) else 'gradient'} "
                         f"(loss {loss.item():.4g}, gradient norm {norm.item():.4g}){kept}; lower --lr/--core-lr")


def _record(run: _Run, done: int, loss, parts: dict, lams: list, factor: float, t0: float, bar) -> None:
    """Log every log_every steps, advance the progress bar, checkpoint every checkpoint_every."""
    config = run.config
    lam_mean = sum(lams) / len(lams) if lams else 1.0
    if done % config.log_every == 0 or done == config.steps:
        entry = {"step": done, "stage": run.stage, "loss": round(loss.item(), 6),
                 **{k: round(v.item(), 6) for k, v in parts.items()}, "lam": round(lam_mean, 4),
                 "lr_factor": round(factor, 4), "elapsed_s": round(time.perf_counter() - t0, 2)}
        run.history.append(entry)
        run.monitor.scalars(done, entry, "train")
        log.info("step %d/%d %s", done, config.steps, " ".join(f"{k}={v}" for k, v in entry.items() if k != "step"))
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lam=f"{lam_mean:.2f}", stage=run.stage)
    if run.monitor.due(done, config.steps):
        run.history.append(run.monitor.evaluate(run.engine, run.wrappers.values(), run.named, run.device, done))
    if run.state_dir is not None and config.checkpoint_every and done % config.checkpoint_every == 0 \
            and done != config.steps:
        run.save(done)


def _finish(run: _Run) -> nn.Module:
    """The PHM-only model: dense weights dropped, LoRA merged, nothing trainable (whole tensors on
    every process: an FSDP2-sharded model is gathered)."""
    for w in run.wrappers.values():
        w.record_recon, w.recon_terms = False, None
    if run.state_dir is not None and run.start < run.config.steps:
        run.save(run.config.steps, "done")
    run.monitor.restore_best(run.named)
    run.monitor.close()
    model = run.model
    if run.world.size > 1 and run.config.parallel == "fsdp":  # FSDP2 sharded the model in place
        unshard(run.engine)
    drop_dense(model)
    if _is_peft(model):
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def distill(model: nn.Module, data, config: DistillConfig, state_dir: str | Path | None = None,
            resume: bool = False, state_extra: dict | None = None, world: World | None = None,
            eval_data: list[dict] | None = None, tensorboard_dir: str | Path | None = None
            ) -> tuple[nn.Module, list[dict]]:
    """Train the PHM layers of an injected model (inject_phm first) towards its own dense self.

    `data`: an object with `batch(step) -> dict of model inputs` and `len()` (TokenBatches,
    ImageTextBatches). Returns (PHM-only model with LoRA merged, log history). With `state_dir`,
    the training state is checkpointed there (with `state_extra` in its JSON); `resume=True`
    continues from it. `world`: the data-parallel processes (default: what torchrun's environment
    says, else this process alone); every process returns the trained model, rank 0 writes the state.
    `eval_data`: held-out batches evaluated every `eval_every` steps (monitor.py; entries with
    stage "eval" in the history); `tensorboard_dir`: where TensorBoard scalars go.
    """
    if not phm_wrappers(model):
        raise ValueError("model has no PHM layers: call inject_phm(model, config) before distill")
    world = world or world_from_env(config.device)
    device = world.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA GPU")
    if config.batch_size % world.size:
        raise ValueError(f"batch_size {config.batch_size} (the global batch) is not divisible by the "
                         f"{world.size} data-parallel processes")
    state_dir = Path(state_dir) if state_dir is not None else None
    saved = _saved_state(state_dir, resume, config)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model.to(device).eval()
    run = _start(model, data, config, device, state_dir, dict(state_extra or {}), saved, world,
                 (eval_data, Path(tensorboard_dir) if tensorboard_dir is not None else None))
    bar = None
    if config.progress and world.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=run.start, desc="distill", unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    for step in range(run.start, config.steps):
        loss, parts, lams, factor = _step(run, data, step, bar)
        _record(run, step + 1, loss, parts, lams, factor, t0, bar)
    if bar is not None:
        bar.close()
    return _finish(run), run.history
