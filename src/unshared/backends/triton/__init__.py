"""The Triton backend: fused GPU kernels (:mod:`.kernels`), their launch parameters
(:mod:`.configs`) and the host side that checks, allocates and launches (:mod:`.launch`).
Importing this package imports no Triton."""
from .launch import TRITON_INSTALLED, can_run, chosen_configs, forward, input_grad, weight_grad

__all__ = ["TRITON_INSTALLED", "can_run", "chosen_configs", "forward", "input_grad", "weight_grad"]
