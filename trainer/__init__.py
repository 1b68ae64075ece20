"""phm.trainer: the PHM core math (hypercomplex.py) and, on top of it, progressive PHM training."""

from .hypercomplex import PHMCost, PHMLinear, basis_family, kron_weight, phm_forward, project_dense

__all__ = ["PHMCost", "PHMLinear", "basis_family", "kron_weight", "phm_forward", "project_dense"]
