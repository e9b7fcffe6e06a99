"""Locally connected layers across devices with ``torch.distributed`` (DTensor).

:class:`PositionParallel` splits a layer by output position (its rows of output positions) over
the ranks of a device mesh, so that only activations cross the network: the halo rows each
rank's windows read in the forward and their gradients in the backward. It is a
``torch.distributed.tensor.parallel.ParallelStyle``, applied with ``parallelize_module``, and it
composes with DDP or FSDP2 over another dimension of the mesh.
"""
from .rows import RowPlan, shard_range
from .style import SUPPORTED_LAYERS, PositionParallel, PositionSharding

__all__ = ["PositionParallel", "PositionSharding", "RowPlan", "SUPPORTED_LAYERS", "shard_range"]
