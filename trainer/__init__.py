"""phm.trainer: the PHM core math (hypercomplex.py) and, on top of it, progressive PHM training.

Modules: hypercomplex (PHM math), arch (per-architecture MLP patterns), inject (config, wrapper,
inject/drop), checkpoint (checkpoint dir save/load), fsutil (atomic writes), tiny_models (tiny
random-weight configs of real architectures, for structure tests).
"""

from .checkpoint import load, read_phm_config, save_phm_checkpoint
from .hypercomplex import PHMCost, PHMLinear, basis_family, kron_weight, phm_forward, project_dense
from .inject import PHMConfig, PHMResidualLinear, drop_dense, inject_phm, phm_targets, set_lambda, teacher_mode

__all__ = [
    "PHMConfig", "PHMCost", "PHMLinear", "PHMResidualLinear", "basis_family", "drop_dense", "inject_phm",
    "kron_weight", "load", "phm_forward", "phm_targets", "project_dense", "read_phm_config",
    "save_phm_checkpoint", "set_lambda", "teacher_mode",
]
