"""What ``unshared info`` prints: the versions, which backends can run here and why not, the
compiled CPU kernels (where they were loaded from, how they were built, which instruction set
runs and why), the threads, and the GPU. The first thing to run when something is slow.

:func:`collect` gathers it as a dict (JSON-serialisable: ``unshared info --json``);
:func:`format_info` lays it out as text. Nothing here imports Triton: its version comes from the
installed package's metadata.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

import torch

from . import __version__
from . import functional as UF
from .backends import BACKENDS, cpu

__all__ = ["collect", "format_info", "build_record", "BUILD_RECORD"]

#: The file setup.py writes beside the compiled kernels: whether they were built and, if not, the
#: compiler's output.
BUILD_RECORD = "_cpu_kernels_build.json"

_ISA_NAMES = {"portable": "portable C", "avx2": "AVX2+FMA", "avx512": "AVX-512"}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_record(package_dir: Path | None = None) -> dict | None:
    """The build record of the compiled kernels in ``package_dir`` (default: this package's
    folder), or None when there is none (a checkout built another way, or a damaged install)."""
    folder = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parent
    try:
        return json.loads((folder / BUILD_RECORD).read_text())
    except (OSError, ValueError):
        return None


def _probe(backend: str, device: str) -> str | None:
    """None when ``backend`` computes a small float32 2d layer on ``device``, else why not."""
    x = torch.zeros(1, 2, 5, 5, device=device)
    w = torch.zeros(3, 3, 2, 2, 3, 3, device=device)
    try:
        UF.locally_connected2d(x, w, backend=backend)
    except ValueError as error:
        text = str(error)
        return text.split("cannot compute this call: ", 1)[-1]
    except Exception as error:  # a broken backend is reported, not raised: info must always print
        return f"failed: {type(error).__name__}: {error}"
    return None


def _isa_reason(available: tuple[str, ...], isa: str) -> str:
    if os.environ.get("UNSHARED_CPU_ISA"):
        return f"UNSHARED_CPU_ISA={os.environ['UNSHARED_CPU_ISA']} is set"
    if platform.machine().lower() not in ("x86_64", "amd64", "x86-64", "i686", "i386"):
        return f"the AVX kernels are x86-64 only; this machine is {platform.machine()}"
    missing = [_ISA_NAMES[name] for name in cpu.ISAS if name not in available]
    lacks = f"; this CPU lacks {' and '.join(missing)}" if missing else ""
    return f"the best instruction set this CPU runs{lacks}"


def _kernels() -> dict:
    path = cpu.library_path()
    record = build_record(path.parent if path is not None else None)
    available = cpu.available_isas()
    entry = {"loaded": bool(available), "library": str(path) if path is not None else None,
             "build": record, "isas": list(available)}
    if available:
        try:
            isa = cpu.current_isa()
            entry.update(isa=isa, isa_reason=_isa_reason(available, isa))
            entry["thread_pool"] = cpu.thread_pool()
        except ValueError as error:  # UNSHARED_CPU_ISA names an instruction set this CPU lacks
            entry.update(isa=None, isa_reason=str(error))
    else:
        entry["reason"] = cpu.can_run(torch.zeros(1), None, None)
    return entry


def _gpus() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    return [{"name": torch.cuda.get_device_name(i), "capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
            for i in range(torch.cuda.device_count())]


def collect() -> dict:
    """Everything :func:`format_info` prints, as a JSON-serialisable dict."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {
        "versions": {"unshared": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     "triton": _version("triton")},
        "platform": f"{platform.system()} {platform.machine()}",
        "package": str(Path(__file__).resolve().parent),
        "backends": {device: {name: _probe(name, device) for name in BACKENDS} for device in devices},
        "cpu_kernels": _kernels(),
        "threads": torch.get_num_threads(),
        "cuda": torch.version.cuda, "gpus": _gpus(),
    }


def _build_lines(record: dict | None) -> list[str]:
    if record is None:
        return ["  build record: none (not built by setup.py, or removed)"]
    if record.get("built"):
        return [f"  build record: built ({record.get('compiler', '?')} compiler, {record.get('platform', '?')})"]
    lines = [f"  build record: NOT built ({record.get('platform', '?')}): {record.get('error', '?')}"]
    output = (record.get("output") or "").strip().splitlines()
    if output:
        lines += ["  the compiler said (last lines):"] + [f"    {line}" for line in output[-12:]]
    return lines


def format_info(info: dict) -> str:
    """The text of ``unshared info``."""
    v = info["versions"]
    lines = [f"unshared {v['unshared']}  (installed at {info['package']})",
             f"PyTorch {v['torch']}, Python {v['python']}, Triton {v['triton'] or 'not installed'}, "
             f"{info['platform']}", ""]
    k = info["cpu_kernels"]
    lines.append(f"compiled CPU kernels: {'loaded' if k['loaded'] else 'NOT available'}")
    lines.append(f"  library: {k['library'] or 'none'}")
    lines += _build_lines(k["build"])
    if k["loaded"]:
        isa = k.get("isa")
        lines.append(f"  instruction set: {_ISA_NAMES.get(isa, isa) if isa else 'none'} ({k['isa_reason']})")
        lines.append(f"  this CPU runs: {', '.join(_ISA_NAMES[name] for name in k['isas'])}")
        if k.get("thread_pool"):
            lines.append(f"  thread pool: {k['thread_pool']}")
    else:
        lines.append(f"  why: {k['reason']}")
        lines.append("  (backend='auto' uses the PyTorch backend on the CPU: same results, slower)")
    lines += ["", f"threads: {info['threads']} (torch.get_num_threads())", ""]
    for device, backends in info["backends"].items():
        lines.append(f"backends on {device} (a float32 2d layer):")
        width = max(map(len, backends))
        for name, reason in backends.items():
            lines.append(f"  {name:<{width}}  {'can run' if reason is None else 'no: ' + reason}")
    lines.append("")
    if info["gpus"]:
        for i, gpu in enumerate(info["gpus"]):
            lines.append(f"GPU {i}: {gpu['name']}, compute capability {gpu['capability']} (CUDA {info['cuda']})")
    else:
        lines.append(f"GPU: none{' (this PyTorch is a CPU build)' if info['cuda'] is None else ' visible to PyTorch'}")
    return "\n".join(lines)


def main(as_json: bool = False, file=None) -> int:
    """Print :func:`format_info` (or the dict as JSON) to ``file`` (default: standard output)."""
    info = collect()
    print(json.dumps(info, indent=1) if as_json else format_info(info), file=file or sys.stdout)
    return 0
