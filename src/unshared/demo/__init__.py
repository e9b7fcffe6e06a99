"""``unshared demo``: does unsharing the weights generalise? Small networks that differ only in
their middle layer (fully connected, locally connected, tiled, low-rank, convolution), trained on
images that ship with scikit-learn and scikit-image, tested on aligned and on shifted images.

Modules: :mod:`.data` (datasets, shifts), :mod:`.experiment` (networks, training, evaluation),
:mod:`.report` (table, ``results.json``), :mod:`.figures` (PNG figures, needs matplotlib).
"""
from .data import DATASETS, DIRECTIONS, MAX_SHIFT, MissingExtra, load_dataset, random_shifts, shift_images
from .experiment import LAYERS, TRAININGS, Result, build_network, evaluate, middle_layer, run_demo
from .figures import save_figures
from .report import format_results, machine, to_records, write_results

__all__ = [
    "DATASETS", "DIRECTIONS", "MAX_SHIFT", "MissingExtra", "load_dataset", "random_shifts", "shift_images",
    "LAYERS", "TRAININGS", "Result", "build_network", "evaluate", "middle_layer", "run_demo",
    "save_figures", "format_results", "machine", "to_records", "write_results",
]
