"""CPU benchmark of locally connected layers; the code is :mod:`unshared.benchmark`.

    python benchmarks/bench_cpu.py            # all cases, < ~10 min on 2 cores
    python benchmarks/bench_cpu.py --quick    # small subset, < 1 min
    python benchmarks/bench_cpu.py --cases tiny --providers unshared-triton,unshared-torch
                                              # the GPU providers on a tiny case (Triton's interpreter)

``--device cuda`` (or ``bench_cuda.py``) runs the CUDA benchmark; ``--help`` lists every option.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # before torch is imported: silence the profiler
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a clone without installing

from unshared.benchmark import main  # noqa: E402

main()
