"""Sparsely connected layers: one filter per connection of a given graph (GenNet's SNP -> gene
layers), the family's general member; a locally connected layer is the case whose connections
form windows (:func:`to_sparse`).

- :mod:`.connectivity`: the accepted forms, their checks, the plan the kernels walk;
- :mod:`.kernels`: the three operations on plain tensors (compiled CPU kernels, standard operators);
- :mod:`.autograd`: their derivative table, the autograd Functions and the ``unshared::sparse_*`` operators;
- :mod:`.layer`: :func:`sparsely_connected` and :class:`SparselyConnected`;
- :mod:`.convert`: :func:`to_sparse` and :func:`sparse_to_linear`.
"""
from .autograd import decompositions
from .convert import sparse_to_linear, to_sparse
from .layer import SparselyConnected, sparsely_connected

__all__ = ["SparselyConnected", "decompositions", "sparse_to_linear", "sparsely_connected", "to_sparse"]
