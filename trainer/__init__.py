"""phm.trainer: the PHM core math (hypercomplex.py) and, on top of it, progressive PHM training.

Modules: hypercomplex (PHM math), arch (per-architecture MLP patterns), inject (config, wrapper,
inject/drop), checkpoint (checkpoint dir save/load, the model without weights), schedule (λ ramps), losses,
calibrate (activation-weighted init), distill (the training verb), data (loaders), models (bundled
real weights), evaluate (fidelity metrics), pipeline (`train`, what phm-train runs), cli.
"""

from .calibrate import calibrate_phm
from .checkpoint import empty_model, load, read_phm_config, save_phm_checkpoint
from .distill import DistillConfig, distill
from .hypercomplex import PHMCost, PHMLinear, basis_family, kron_weight, phm_forward, project_dense
from .inject import PHMConfig, PHMResidualLinear, drop_dense, inject_phm, phm_targets, set_lambda, teacher_mode
from .models import load_minilm, load_smollm2
from .pipeline import train

__all__ = [
    "DistillConfig", "PHMConfig", "PHMCost", "calibrate_phm", "distill", "load_minilm", "load_smollm2", "train", "PHMLinear", "PHMResidualLinear", "basis_family", "drop_dense", "empty_model", "inject_phm",
    "kron_weight", "load", "phm_forward", "phm_targets", "project_dense", "read_phm_config",
    "save_phm_checkpoint", "set_lambda", "teacher_mode",
]
