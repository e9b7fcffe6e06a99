"""The demo: shifts, evaluation, results.json, the table, the figures, the command end to end."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from unshared import cli, demo

pytest.importorskip("sklearn")
pytest.importorskip("skimage")
ROOT = Path(__file__).resolve().parents[1]
RECORD_KEYS = {"dataset", "layer", "training", "parameters", "middle_parameters", "multiply_adds", "seeds",
               "spread", "accuracy", "accuracy_spread", "shifted_accuracy", "shifted_accuracy_spread",
               "accuracy_by_shift", "per_seed"}


def test_shift_images_moves_and_fills_with_zeros():
    x = torch.arange(1, 10.0).reshape(1, 1, 3, 3)
    assert demo.shift_images(x, 1, 0)[0, 0].tolist() == [[0, 0, 0], [1, 2, 3], [4, 5, 6]]
    assert demo.shift_images(x, 0, -1)[0, 0].tolist() == [[2, 3, 0], [5, 6, 0], [8, 9, 0]]
    assert demo.shift_images(x, -2, 2)[0, 0].tolist() == [[0, 0, 7], [0, 0, 0], [0, 0, 0]]
    assert torch.equal(demo.shift_images(x, 0, 0), x)


def test_random_shifts_are_shifts_within_the_bound():
    torch.manual_seed(0)
    x = torch.rand(40, 2, 9, 9)
    moved = demo.random_shifts(x, 3, torch.Generator().manual_seed(1))
    every = {(dy, dx): demo.shift_images(x, dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)}
    found = set()
    for i in range(len(x)):
        match = [d for d, shifted in every.items() if torch.equal(shifted[i], moved[i])]
        assert match, f"image {i} is not a shift of at most 3 pixels"
        found.add(match[0])
    assert len(found) > 10  # the shifts vary from image to image


@pytest.mark.parametrize("name", ["digits", "faces"])
def test_canvas_border_keeps_every_pixel_under_the_largest_shift(name):
    x, y, classes = demo.load_dataset(name)
    spec = demo.DATASETS[name]
    assert x.dtype == torch.float32 and x.shape[1] == 1 and len(classes) == spec.classes == len(y.unique())
    for dy, dx in demo.DIRECTIONS:
        moved = demo.shift_images(x, demo.MAX_SHIFT * dy, demo.MAX_SHIFT * dx)
        assert torch.equal(moved.flatten(1).sort().values, x.flatten(1).sort().values)  # the same pixels


def test_evaluate_averages_over_directions():
    x = torch.zeros(4, 1, 9, 9)
    x[:, 0, 4, 4] = torch.tensor([1.0, 1.0, 0.0, 0.0])  # class 1 has a centre pixel
    y = torch.tensor([1, 1, 0, 0])
    # reads the centre pixel only: right when aligned; shifted, it calls every image class 0 (half right)
    reads_centre = nn.Sequential(nn.Flatten(), nn.Linear(81, 2))
    with torch.no_grad():
        reads_centre[1].weight.zero_()
        reads_centre[1].bias.copy_(torch.tensor([0.5, 0.0]))
        reads_centre[1].weight[1, 40] = 1.0
    assert demo.evaluate(reads_centre, x, y, max_shift=2) == [1.0, 0.5, 0.5]
    # looks for the pixel anywhere: the same at every shift
    anywhere = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        anywhere[2].weight.copy_(torch.tensor([[0.0], [1.0]]))
        anywhere[2].bias.copy_(torch.tensor([0.5, 0.0]))
    assert demo.evaluate(anywhere, x, y, max_shift=2) == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("kind", demo.LAYERS)
def test_networks_share_the_head_and_differ_in_the_middle(kind):
    net = demo.build_network(kind, (14, 14), 16, 7, 10)
    assert net(torch.rand(3, 1, 14, 14)).shape == (3, 10)
    assert isinstance(net[2], nn.AdaptiveMaxPool2d) and net[4].in_features == 16
    assert net[0](torch.rand(2, 1, 14, 14)).shape == (2, 16, 14, 14)


def test_demo_quick_end_to_end(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--epochs", "1", "--output", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for layer in demo.LAYERS:
        assert out.count(layer) == 4  # one row per dataset and training
    assert "shifted 1-3 px" in out and "one seed" in out and "± 0.0" not in out and "(n=1)" not in out
    assert str(tmp_path.resolve()) in out  # says where it wrote
    records = json.loads((tmp_path / "results.json").read_text())
    assert len(records) == 2 * 2 * len(demo.LAYERS)
    for r in records:
        assert RECORD_KEYS <= set(r), RECORD_KEYS - set(r)
        assert r["seeds"] == 1 and r["accuracy_spread"] is None and r["shifted_accuracy_spread"] is None
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["shifted_accuracy"] <= 1
        curve = [point["accuracy"] for point in r["accuracy_by_shift"]]
        assert [point["shift"] for point in r["accuracy_by_shift"]] == list(range(demo.MAX_SHIFT + 1))
        assert curve[0] == r["accuracy"]
        assert r["shifted_accuracy"] == pytest.approx(sum(curve[1:]) / demo.MAX_SHIFT)
    assert {(r["dataset"], r["training"]) for r in records} == {
        (d, t) for d in ("digits", "faces") for t in ("aligned", "shifted")}
    if importlib.util.find_spec("matplotlib"):  # the figures need it
        for name in ("accuracy_vs_parameters", "accuracy_vs_shift", "filters_digits", "filters_faces"):
            assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_several_seeds_give_a_spread_and_threads_are_restored():
    threads = torch.get_num_threads()
    results, models = demo.run_demo(("faces",), seeds=2, epochs=1, progress=False, trainings=("aligned",))
    assert torch.get_num_threads() == threads
    assert set(models) == {("faces", layer, "aligned") for layer in demo.LAYERS}
    for record in demo.to_records(results):
        assert record["seeds"] == 2 and len(record["per_seed"]["accuracy"]) == 2
        assert record["accuracy_spread"] is not None and record["accuracy_by_shift"][1]["spread"] is not None
    table = demo.format_results(results)
    assert "sample standard deviation over seeds (n=2)" in table and " ± " in table


def test_unsharing_fits_aligned_digits_but_only_the_convolution_survives_shifts():
    results, _ = demo.run_demo(("digits",), seeds=1, epochs=4, progress=False, trainings=("aligned",))
    by_layer = {r.layer: r for r in results}
    assert all(r.accuracies[0] > 0.75 for r in results), [(r.layer, r.accuracies) for r in results]
    conv, local = by_layer["convolution"], by_layer["locally connected"]
    assert conv.shifted_accuracies[0] > conv.accuracies[0] - 0.05
    assert local.shifted_accuracies[0] < local.accuracies[0] - 0.3


def test_figures_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    results, models = demo.run_demo(("faces",), seeds=1, epochs=1, progress=False, trainings=("aligned",))
    paths = demo.save_figures(results, models, tmp_path / "new")
    assert [p.name for p in paths] == ["accuracy_vs_parameters.png", "accuracy_vs_shift.png", "filters_faces.png"]


def test_demo_missing_extra_says_which_pip_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails
    assert cli.main(["demo", "--quick", "--dataset", "digits", "--no-progress"]) == 1
    assert "the demo needs scikit-learn: pip install 'unshared[demo]'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["demo", "--dataset", "cifar"], ["demo", "--seeds", "0"],
                                  ["demo", "--threads", "two"]])
def test_demo_bad_arguments_show_the_demo_usage(argv, capsys):
    with pytest.raises(SystemExit, match="^2$") as exit_info:  # argparse's usage error
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: unshared demo") and "error" in err


def test_run_demo_names_bad_values():
    with pytest.raises(ValueError, match="dataset must be one of .* got 'cifar'"):
        demo.run_demo(("cifar",))
    with pytest.raises(ValueError, match="training must be one of .* got 'rotated'"):
        demo.run_demo(("digits",), trainings=("rotated",))


def test_default_output_folder_is_ignored_by_git():
    assert cli.build_parser().parse_args(["demo"]).output == Path("unshared-demo")
    assert "unshared-demo/" in (ROOT / ".gitignore").read_text().splitlines()
