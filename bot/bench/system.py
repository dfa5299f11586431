"""What the benchmark ran on, and how much memory it took."""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (VmHWM), in MiB.

    Not an exact bound on earlier `rss_mb` readings: the kernel counts resident pages per
    CPU and folds them in batches, so both figures are approximate, and a VmRSS sampled
    earlier was measured a few pages above a later VmHWM (under
    `ONEDNN_MAX_CPU_ISA=AVX2`, where the failed bf16 kernel timing allocates differently,
    every time). Callers take the larger of the two as the peak.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mb() -> float:
    """The process's resident memory now, in MiB (0 where /proc is missing)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def machine() -> dict[str, Any]:
    """CPU, cores, memory, library versions and threads: enough to compare runs."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = 0.0
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = int(line.split()[1]) / 2**20
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(memory_gb, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", "(unset)"),
    }


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: other work on the machine skews the figures."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
