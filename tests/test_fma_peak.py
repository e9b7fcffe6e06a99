"""The FMA microbenchmark built beside the CPU kernels (``csrc/peak.c``, ``cpu.fma_peak``): the
benchmarks' compute limit. Every instruction set this CPU runs, both dtypes, 1 and 2 threads; the
checksum is the same recurrence computed in Python (so the loop really runs); a wrong instruction
set is refused by name. Timings enter no assertion: that the benchmarks' floor is never below the
matmul rate is the harness's rule (``tests/test_benchmark.py``), not a race between two timings."""
import math

import pytest
import torch

from unshared.backends import cpu, cpu_machine

pytestmark = pytest.mark.skipif(not cpu.available_isas(), reason="the compiled CPU kernels are not built")

CHAINS = 12  # LC_PEAK_CHAINS
VECTOR_BYTES = {"portable": 16, "avx2": 32, "avx512": 64}
DTYPES = {torch.float32: 4, torch.float64: 8}


def expected(isa: str, dtype: torch.dtype, threads: int, iterations: int) -> tuple[float, int]:
    """peak.c's checksum and flops: lane l of chain c on thread t starts at t + c + l + 1 and steps
    x = x * 0.5 + 1 (exact in float32 for these few steps, so float64 here gives the same sums)."""
    lanes = VECTOR_BYTES[isa] // DTYPES[dtype]
    total = 0.0
    for t in range(threads):
        for c in range(CHAINS):
            for lane in range(lanes):
                x = float(t + c + lane + 1)
                for _ in range(iterations):
                    x = x * 0.5 + 1.0
                total += x
    return total, threads * iterations * CHAINS * lanes * 2


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("isa", cpu.ISAS)
def test_every_isa_and_dtype_runs_the_recurrence_and_gives_a_rate(isa, dtype, threads):
    if isa not in cpu.available_isas():
        pytest.skip(f"this CPU does not run {isa}")
    for iterations in (0, 1, 7):
        assert cpu_machine._fma_run(isa, dtype, threads, iterations) == expected(isa, dtype, threads, iterations)
    assert expected(isa, dtype, threads, 7)[0] != expected(isa, dtype, threads, 0)[0]
    rate = cpu.fma_peak(isa, dtype, threads, seconds=0.02)
    assert math.isfinite(rate) and rate > 0


def test_unsupported_isa_dtype_or_threads_are_refused_by_name():
    with pytest.raises(ValueError, match=r"isa='avx1024'"):
        cpu.fma_peak("avx1024")
    for isa in cpu.ISAS:
        if isa not in cpu.available_isas():
            with pytest.raises(ValueError, match=rf"isa='{isa}'"):
                cpu.fma_peak(isa)
    with pytest.raises(ValueError, match=r"dtype=torch.bfloat16"):
        cpu.fma_peak(dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"threads=0"):
        cpu.fma_peak(threads=0)


def test_defaults_are_the_current_isa_and_torch_threads(monkeypatch):
    calls = []
    run = cpu_machine._fma_run
    monkeypatch.setattr(cpu_machine, "_fma_run", lambda *args: calls.append(args[:3]) or run(*args))
    cpu.fma_peak(seconds=0.01)
    assert set(calls) == {(cpu.current_isa(), torch.float32, torch.get_num_threads())}
