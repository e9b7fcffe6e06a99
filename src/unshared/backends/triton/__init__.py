"""The Triton backend: fused GPU kernels (:mod:`.kernels`), their launch parameters
(:mod:`.configs`) and the host side that checks, allocates and launches (:mod:`.launch`).
Importing this package imports no Triton."""
from .launch import TRITON_INSTALLED, can_run, chosen_configs, forward, input_grad, weight_grad

#: computed inside the custom operator (not made of standard differentiable operators)
STANDARD_OPERATORS = False

__all__ = ["TRITON_INSTALLED", "can_run", "chosen_configs", "forward", "input_grad", "weight_grad"]
