"""CUDA benchmark of locally connected layers: ``benchmarks/bench_cpu.py`` with ``--device cuda``
(the code is :mod:`unshared.benchmark`).

    python benchmarks/bench_cuda.py            # DeepFace L4-L6 at batch 32 and 256, float32 and bfloat16
    python benchmarks/bench_cuda.py --quick    # L6-32 and L4-256, few repetitions
    python benchmarks/bench_cuda.py --cases L4-256 --dtype bfloat16 --tf32

Every option of ``bench_cpu.py`` works here (``--help``); ``--device cpu`` overrides the default.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # before torch is imported: silence the profiler
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a clone without installing

from unshared.benchmark import main  # noqa: E402

main(["--device", "cuda", *sys.argv[1:]])  # a later --device wins
