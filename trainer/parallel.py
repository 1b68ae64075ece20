"""Data-parallel training on PyTorch's own engine: the process group `torchrun` describes, each
process's rows of the global batch, the DDP or FSDP2 wrapper, and the sums over processes that
make the loss of N processes the loss of the whole batch.

    torchrun --nproc-per-node 4 $(which phm-train) MODEL_DIR --out OUT --parallel fsdp …

One process (no WORLD_SIZE in the environment, or 1) is the plain single-device run, unchanged.
With N processes `batch_size` stays the global batch: every process builds the same global batch
(`data.batch(step)`, a pure function of the step) and keeps its 1/N of the rows (`World.shard`), so
a run and its resumption with another N see the same data. Losses divide by token (or sample) counts
summed over the processes (losses.py `total`), gradients are averaged by DDP / FSDP2 (hence each
process's loss is scaled by N before backward), and the logged loss is the sum over processes: the
same numbers as one process on the whole batch, up to float summation order. Rank 0 writes every
file; the training state holds whole tensors (FSDP2 shards gathered), so it resumes on any N.
Communication is torch.distributed's (init_process_group, all_reduce, DDP, fully_shard); nothing
here sends a tensor by hand except the one-line error rank 0 hands the others before training.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["PARALLEL_MODES", "World", "env_world_size", "world_from_env"]

log = logging.getLogger(__name__)

PARALLEL_MODES = ("ddp", "fsdp")


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes (rank 0 of 1 when alone)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        """The device of this process: `cuda` becomes this process's GPU (LOCAL_RANK)."""
        device = torch.device(name)
        if device.type == "cuda" and device.index is None and self.size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """`value` (detached) summed over the processes: the normaliser of the whole batch."""
        value = value.detach()
        if self.size == 1:
            return value
        value = value.clone()
        dist.all_reduce(value)
        return value

    def shard(self, batch: dict) -> dict:
        """This process's rows of a collated global batch: every tensor with one row per sample is
        cut into `size` equal parts; a Qwen2-VL-style `pixel_values` (patches of all images in one
        tensor) is cut by `image_grid_thw`, one image per sample."""
        if self.size == 1:
            return batch
        rows = batch["input_ids"].shape[0]
        if rows % self.size:
            raise ValueError(f"a batch of {rows} rows cannot be split over {self.size} processes; "
                             f"use a --batch-size divisible by {self.size} (and at least that many samples)")
        per = rows // self.size
        lo, hi = self.rank * per, (self.rank + 1) * per
        out = {}
        for key, value in batch.items():
            if key == "pixel_values" and "image_grid_thw" in batch:
                patches = batch["image_grid_thw"].prod(-1).tolist()
                if len(patches) != rows:
                    raise ValueError("data-parallel image batches need exactly one image per sample")
                out[key] = value[sum(patches[:lo]):sum(patches[:hi])]
            elif torch.is_tensor(value) and value.dim() and value.shape[0] == rows:
                out[key] = value[lo:hi]
            elif torch.is_tensor(value):
                raise ValueError(f"cannot split batch field {key!r} of shape {tuple(value.shape)} over processes")
            else:
                out[key] = value
        return out

    def main_first(self, fn):
        """Run `fn` on rank 0, then (if it succeeded) on the others; used for work whose result rank
        0 writes to a file the others then read (sampled texts, the output dir's checks). A
        ValueError on rank 0 is raised on every rank with its message, not a hang at the next
        collective."""
        if self.size == 1:
            return fn()
        result, error = None, ""
        if self.main:
            try:
                result = fn()
            except ValueError as e:
                error = str(e) or type(e).__name__
        error = self._from_main(error)
        if error:
            raise ValueError(error if self.main else f"rank 0 stopped the run: {error}")
        return result if self.main else fn()

    def _from_main(self, text: str) -> str:
        """`text` of rank 0 on every rank (UTF-8 bytes in a tensor: no pickled objects)."""
        data = torch.tensor(list(text.encode()) if self.main else [], dtype=torch.uint8)
        size = torch.tensor([data.numel()], dtype=torch.int64)
        dist.broadcast(size, src=0)
        buf = data if self.main else torch.empty(int(size.item()), dtype=torch.uint8)
        if buf.numel():
            dist.broadcast(buf, src=0)
        return bytes(buf.tolist()).decode()


def env_world_size() -> int:
    """The number of processes `torchrun` (or another launcher) says this one is among (1 alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_from_env(device: str = "cpu") -> World:
    """The World `torchrun` describes in the environment, joining its process group (gloo on the
    CPU, NCCL on GPUs) on first use; a single World without WORLD_SIZE > 1."""
    if env_world_size() <= 1:
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def layer_stacks(model: nn.Module) -> list[nn.Module]:
    """The transformer layers (the children of every ModuleList that holds PHM wrappers): FSDP2's
    sharding units and gradient checkpointing's recomputation units."""
    from .local import phm_layer_stacks

    return [model.get_submodule(path)[i] for path, _ in phm_layer_stacks(model)
            for i in range(len(model.get_submodule(path)))]


def wrap(model: nn.Module, world: World, mode: str, device: torch.device) -> nn.Module:
    """The module the student's forward and backward go through: `model` itself alone, DDP, or the
    FSDP2-sharded `model` (each transformer layer one unit, the rest the root's)."""
    if world.size == 1:
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # PHM cores of a tower the batch does not reach (a vision tower on text data) get no gradient
        # (buffers are constants: rotary tables, PHM bases; nothing to broadcast every forward)
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=True, broadcast_buffers=False)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in layer_stacks(model):
            fully_shard(layer)
        fully_shard(model)
        return model
    raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {mode!r}")


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 shard (a collective: every rank calls it), else `t`."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def like(reference: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """`whole` laid out as `reference`: this rank's shard when `reference` is an FSDP2 DTensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(reference, DTensor):
        return distribute_tensor(whole.to(reference.device), reference.device_mesh, reference.placements)
    return whole.to(reference.device)


def unshard(model: nn.Module) -> None:
    """Turn an FSDP2-sharded model back into a plain one holding whole tensors on every rank (the
    end of training: dropping the dense weights, merging LoRA and saving need whole tensors)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    gathered: dict[int, nn.Parameter] = {}  # a tied parameter (embeddings = LM head) stays one parameter
    for module in list(model.modules()):
        for name, param in list(module.named_parameters(recurse=False)):
            if isinstance(param, DTensor):
                if id(param) not in gathered:
                    gathered[id(param)] = nn.Parameter(param.full_tensor(), requires_grad=param.requires_grad)
                module._parameters[name] = gathered[id(param)]
        if isinstance(module, FSDPModule):
            # FSDP2 made the class a subclass of (FSDPModule, original); its hooks expect shards
            module.__class__ = next(c for c in type(module).__mro__[1:]
                                    if not issubclass(c, FSDPModule) and issubclass(c, nn.Module))
            module._forward_pre_hooks.clear()
            module._forward_hooks.clear()
            module._forward_pre_hooks_with_kwargs.clear()
            module._forward_hooks_with_kwargs.clear()
