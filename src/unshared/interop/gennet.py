"""GenNet's topology table as connectivities of :class:`unshared.SparselyConnected` layers.

GenNet (van Hilten et al. 2021) describes a network by a table with one row per input (a SNP) and
columns ``layer0_node``, ``layer1_node``, ... (and optionally ``layerK_name``): row ``r`` says that
node ``layer0_node[r]`` of layer 0 feeds node ``layer1_node[r]`` of layer 1, which feeds node
``layer2_node[r]`` of layer 2, and so on (SNP -> gene -> pathway). Each pair of consecutive
columns is one sparse layer; a pair that several rows repeat (a gene listed once per SNP) is one
connection. This module reads such a table, written from scratch for ``unshared`` (it shares no
code with GenNet).
"""
from __future__ import annotations

import csv
import math
import os
import re
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["GenNetLayer", "gennet_connectivity"]

_NODE = re.compile(r"^layer(\d+)_node$")


class GenNetLayer(NamedTuple):
    """One sparse layer of a topology: ``SparselyConnected(in_features, out_features, connectivity)``."""
    connectivity: Tensor   # (2, nnz) int64: (node of layer K, node of layer K + 1) pairs
    in_features: int
    out_features: int


def _columns(table) -> dict[str, list]:
    """``{column: values}`` of a CSV path (read with pandas when it is installed, else the csv
    module) or of a DataFrame-like object (``table.columns`` and ``table[column]``)."""
    if isinstance(table, (str, os.PathLike)):
        try:
            import pandas
        except ImportError:
            pandas = None
        if pandas is not None:
            table = pandas.read_csv(table)
        else:
            with open(table, newline="") as handle:
                rows = list(csv.DictReader(handle))
            names = list(rows[0]) if rows else []
            return {name: [row[name] for row in rows] for name in names}
    if not hasattr(table, "columns"):
        raise TypeError(f"gennet_connectivity: table must be a CSV path or a pandas DataFrame, got "
                        f"{type(table).__name__}")
    return {str(name): list(table[name]) for name in table.columns}


def _index(value, column: str, row: int) -> int | None:
    """A node index; None for a missing value (an empty cell, NaN)."""
    if value is None or (isinstance(value, str) and value.strip() == "") or \
            (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer() or number < 0:
        raise ValueError(f"gennet_connectivity: {column} must hold non-negative integer node indices, row {row} "
                         f"has {value!r}")
    return int(number)


def gennet_connectivity(table, sizes: list[int] | None = None) -> list[GenNetLayer]:
    """The sparse layers of a GenNet topology table, one per pair of consecutive ``layerK_node``
    columns.

    Args:
        table: a CSV path or a pandas ``DataFrame`` with columns ``layer0_node``, ``layer1_node``,
            ... (other columns, such as ``layerK_name``, are ignored). Pandas is optional: a CSV
            path is read with the ``csv`` module when pandas is not installed.
        sizes: nodes per layer (default: the largest index in each column + 1); give it when the
            last nodes of a layer have no connection.

    Returns:
        a list of :class:`GenNetLayer` ``(connectivity, in_features, out_features)``, from the
        input layer on; each connectivity holds each pair once, in the order of first appearance.
        A row with an empty cell contributes no connection at that cell.

    Raises:
        ValueError: fewer than two ``layerK_node`` columns, a gap in their numbering, an index that
            is not a non-negative integer or that ``sizes`` does not hold.

    Example::

        >>> import os, tempfile, torch, unshared
        >>> from unshared.interop import gennet_connectivity
        >>> rows = "layer0_node,layer1_node,layer2_node\\n0,0,0\\n1,0,0\\n2,1,0\\n3,1,0\\n4,2,1\\n"
        >>> folder = tempfile.mkdtemp()
        >>> with open(os.path.join(folder, "topology.csv"), "w") as f:
        ...     _ = f.write(rows)
        >>> snps_to_genes, genes_to_pathways = gennet_connectivity(os.path.join(folder, "topology.csv"))
        >>> snps_to_genes.connectivity.tolist(), snps_to_genes.in_features, snps_to_genes.out_features
        ([[0, 1, 2, 3, 4], [0, 0, 1, 1, 2]], 5, 3)
        >>> net = torch.nn.Sequential(*(unshared.SparselyConnected(*layer[1:], layer[0])
        ...                             for layer in (snps_to_genes, genes_to_pathways)))
        >>> net(torch.randn(8, 5)).shape
        torch.Size([8, 2])
    """
    columns = _columns(table)
    found = {int(m.group(1)): name for name in columns if (m := _NODE.match(name))}
    if len(found) < 2:
        raise ValueError(f"gennet_connectivity: the table needs columns layer0_node, layer1_node, ...; found "
                         f"{sorted(found.values()) or 'none'} among {list(columns)}")
    if sorted(found) != list(range(len(found))):
        raise ValueError(f"gennet_connectivity: the layerK_node columns must be numbered 0, 1, 2, ... without "
                         f"gaps, got {[found[k] for k in sorted(found)]}")
    nodes = [[_index(v, found[k], r) for r, v in enumerate(columns[found[k]])] for k in range(len(found))]
    if sizes is None:
        sizes = [max((v for v in column if v is not None), default=-1) + 1 for column in nodes]
    elif len(sizes) != len(nodes):
        raise ValueError(f"gennet_connectivity: sizes has {len(sizes)} entries for {len(nodes)} layers")
    for k, column in enumerate(nodes):
        too_big = [r for r, v in enumerate(column) if v is not None and v >= sizes[k]]
        if too_big:
            raise ValueError(f"gennet_connectivity: {found[k]} row {too_big[0]} has node {column[too_big[0]]}, but "
                             f"the layer has sizes[{k}]={sizes[k]} nodes")
    layers = []
    for k in range(len(nodes) - 1):
        pairs = dict.fromkeys((a, b) for a, b in zip(nodes[k], nodes[k + 1]) if a is not None and b is not None)
        connectivity = torch.tensor(list(pairs), dtype=torch.int64).reshape(-1, 2).t().contiguous()
        layers.append(GenNetLayer(connectivity, sizes[k], sizes[k + 1]))
    return layers
