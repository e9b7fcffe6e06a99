"""Bring locally connected weights from Keras and JAX/Flax into PyTorch.

- :func:`from_keras` (in :mod:`.keras`): a ``tf_keras.layers.LocallyConnected1D/2D`` layer, or its
  ``get_config()`` dict and ``get_weights()`` list (no TensorFlow needed), any ``implementation``
  (1, 2, 3), either ``data_format``.
- :func:`from_flax` (in :mod:`.flax`): ``flax.linen.ConvLocal`` parameters (channels-last, kernel
  ``(*output_size, in_channels * prod(kernel_size), features)``).
- :func:`from_lax` (in :mod:`.flax`): the ``rhs`` of ``jax.lax.conv_general_dilated_local`` (default
  dimension numbers: ``(out_channels, in_channels * prod(filter_shape), *output_size)``).
- :func:`gennet_connectivity` (in :mod:`.gennet`): GenNet's topology table (``layerK_node``
  columns, a CSV path or a pandas DataFrame) as the connectivities of
  :class:`unshared.SparselyConnected` layers.
- :mod:`.common`: what they share (arrays to tensors, argument and shape checks, building the layer).

Each returns an :class:`unshared.LocallyConnected1d/2d/3d` computing the same function on
**channels-first** input ``(N, C, *spatial)``; wrapped in ``nn.Sequential`` (children ``pad``,
``local``, ``activation``) only when the source pads unevenly or applies an activation.
Nothing here imports TensorFlow, Keras, JAX, Flax or numpy at import time: objects are read by
duck typing (``get_config``/``get_weights``, ``np.asarray``), numpy only when handed arrays.
"""
from .flax import from_flax, from_lax
from .gennet import gennet_connectivity
from .keras import from_keras

__all__ = ["from_keras", "from_flax", "from_lax", "gennet_connectivity"]
