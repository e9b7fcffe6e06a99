"""gennet_connectivity: GenNet's topology table (layerK_node columns) as the connectivities of
SparselyConnected layers, on small tables the tests write themselves."""
import pytest
import torch

from unshared.interop import gennet_connectivity
from unshared.sparse import SparselyConnected

ROWS = [  # SNP, gene, pathway: genes 0 and 1 in pathway 0, gene 2 in pathway 1, SNP 5 unmapped
    (0, 0, 0), (1, 0, 0), (2, 1, 0), (3, 1, 0), (3, 2, 1), (4, 2, 1), (5, "", ""),
]


def write(path, rows, header="layer0_node,layer0_name,layer1_node,layer1_name,layer2_node"):
    path.write_text(header + "\n" + "".join(f"{a},snp{a},{b},gene{b},{c}\n" for a, b, c in rows))
    return path


class Frame:
    """What gennet_connectivity reads of a DataFrame: ``columns`` and ``frame[column]``."""

    def __init__(self, columns):
        self.data = columns
        self.columns = list(columns)

    def __getitem__(self, name):
        return self.data[name]


def test_reads_a_csv_into_one_connectivity_per_layer(tmp_path):
    genes, pathways = gennet_connectivity(write(tmp_path / "topology.csv", ROWS))
    assert genes.connectivity.tolist() == [[0, 1, 2, 3, 3, 4], [0, 0, 1, 1, 2, 2]]
    assert (genes.in_features, genes.out_features) == (6, 3)
    assert pathways.connectivity.tolist() == [[0, 1, 2], [0, 0, 1]]  # one connection per repeated pair
    assert (pathways.in_features, pathways.out_features) == (3, 2)
    net = torch.nn.Sequential(*(SparselyConnected(layer.in_features, layer.out_features, layer.connectivity,
                                                  dtype=torch.float64) for layer in (genes, pathways)))
    x = torch.randn(4, 6, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 5] += 1  # the unmapped SNP changes nothing
    torch.testing.assert_close(net(x), net(x2))
    assert net(x).shape == (4, 2)


def test_dataframe_like_and_sizes():
    frame = Frame({"layer1_node": [0, 0, 2], "layer0_node": [0, 1, 2], "other": ["a", "b", "c"]})
    (layer,) = gennet_connectivity(frame, sizes=[4, 5])
    assert layer.connectivity.tolist() == [[0, 1, 2], [0, 0, 2]] and layer[1:] == (4, 5)
    with pytest.raises(ValueError, match=r"layer1_node row 2 has node 2, but the layer has sizes\[1\]=2"):
        gennet_connectivity(frame, sizes=[4, 2])


def test_pandas_dataframe(tmp_path):
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv(write(tmp_path / "topology.csv", ROWS))
    genes, pathways = gennet_connectivity(frame)
    assert genes.connectivity.tolist() == [[0, 1, 2, 3, 3, 4], [0, 0, 1, 1, 2, 2]]
    assert pathways.out_features == 2


@pytest.mark.parametrize("columns,match", [
    ({"layer0_node": [0, 1]}, "needs columns layer0_node, layer1_node"),
    ({"layer0_node": [0], "layer2_node": [0]}, "numbered 0, 1, 2, ... without gaps"),
    ({"layer0_node": [0, 1.5], "layer1_node": [0, 0]}, "non-negative integer node indices, row 1 has 1.5"),
    ({"layer0_node": [0, -1], "layer1_node": [0, 0]}, "non-negative integer node indices, row 1 has -1"),
    ({"layer0_node": ["a"], "layer1_node": [0]}, "row 0 has 'a'"),
])
def test_bad_tables_are_refused(columns, match):
    with pytest.raises(ValueError, match=match):
        gennet_connectivity(Frame(columns))
    with pytest.raises(TypeError, match="CSV path or a pandas DataFrame"):
        gennet_connectivity([[0, 1]])
