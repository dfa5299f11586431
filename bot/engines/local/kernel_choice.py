"""Pick the fastest linear kernel per weight shape by timing the candidates on this machine.

The same kernel is twice as fast on one CPU as on another (MKL's few-row path, oneDNN's
per-call setup, bf16 and int8 instructions differ between Intel and AMD), so nothing is
hard-coded: at the first start each shape's candidates run over the model's own weights of
that shape (several layers, so the weights stream from memory as in a real step) for one row
and for `BATCH_ROWS` rows, taking turns, and the one with the lowest sum wins. A candidate
that fails to build or run, or whose output on the model's own weights is not what fp32
gives within the kernel's tolerance (`linear_kernels.wrong_results`: oneDNN int8 without
VNNI saturates), is left out and logged: a wrong kernel is never chosen, however fast. The
choice is cached in a JSON file next to the converted model, keyed by the CPU, the
instruction set torch and oneDNN use on it, torch version and thread count, so later starts
skip the timing, and a copy of the cache on another kind of server times again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bot.engines.local.linear_kernels import CpuLinear, available, wrong_results

log = logging.getLogger(__name__)

BATCH_ROWS = 8
"""Rows of a batched decoding step the timing also measures."""
TIMED_BYTES = 48 * 2**20
"""fp32 bytes of weights each candidate streams per timed pass (more than the CPU caches
hold for one core), or all the layers of the shape when they are fewer."""
PASSES = 3
CACHE_VERSION = 3
"""Raised when a kernel changes, so cached choices made with the old one are timed again."""
_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
          "amx_int8", "amx_tile")

Timer = Callable[[Sequence[str], Sequence[torch.Tensor]], dict[str, float]]
Builder = Callable[[torch.Tensor, str], torch.nn.Module]
"""Makes the layer of one kernel for one weight (`CpuLinear`; tests pass wrong ones)."""


def shape_key(weight: torch.Tensor) -> str:
    out_features, in_features = weight.shape
    return f"{out_features}x{in_features}"


def machine_key() -> str:
    """CPU model and its matrix instructions, torch version and threads: what the timings
    depend on."""
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    present = ",".join(f for f in _FLAGS if f in flags)
    return (f"{cpu}|{present}|{_effective_isa()}|torch {torch.__version__}"
            f"|{torch.get_num_threads()} threads")


def _effective_isa() -> str:
    """What torch dispatches to (`ATEN_CPU_CAPABILITY` can lower it) and which kernels pass
    their check (`ONEDNN_MAX_CPU_ISA` can turn bf16 and int8 off): the same CPU differs."""
    working = "+".join(k for k in ("bf16", "int8") if available(k))
    return f"aten {torch.backends.cpu.get_cpu_capability()} {working or 'fp32 only'}"


def _build(weight: torch.Tensor, kernel: str) -> torch.nn.Module:
    return CpuLinear(weight, None, kernel)


def time_kernels(kernels: Sequence[str], weights: Sequence[torch.Tensor], *,
                 build: Builder = _build) -> dict[str, float]:
    """Seconds per layer for one row plus `BATCH_ROWS` rows through each kernel: the
    fastest of `PASSES` passes over `weights` (after a warm-up pass), the kernels taking
    turns so that other load on the machine hits them alike. A kernel that fails to build
    or run, or computes wrong results on `weights[0]`, is left out (and logged)."""
    layers: dict[str, list[torch.nn.Module]] = {}
    best: dict[str, float] = {}
    with torch.inference_mode():
        for kernel in kernels:
            try:
                layers[kernel] = [build(w, kernel) for w in weights]
                wrong = wrong_results(layers[kernel][0], weights[0], kernel)
            except Exception:  # e.g. oneDNN's bf16 packing on a CPU without AVX-512
                log.warning("linear kernel %s does not run here; not used", kernel,
                            exc_info=True)
                layers.pop(kernel, None)
                continue
            if wrong is not None:
                log.warning("linear kernel %s computes wrong results here for %s weights "
                            "(%s); not used", kernel, shape_key(weights[0]), wrong)
                del layers[kernel]
        inputs = [torch.randn(rows, weights[0].shape[1]) for rows in (1, BATCH_ROWS)]
        for _ in range(PASSES + 1):
            for kernel, timed in layers.items():
                took = 0.0
                for x in inputs:
                    start = time.perf_counter()
                    for layer in timed:
                        layer(x)
                    took += time.perf_counter() - start
                best[kernel] = min(best.get(kernel, float("inf")), took / len(timed))
    return best


def sample(weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Enough of `weights` for a timed pass to stream `TIMED_BYTES`."""
    picked: list[torch.Tensor] = []
    for weight in weights:
        picked.append(weight)
        if sum(w.numel() * 4 for w in picked) >= TIMED_BYTES:
            break
    return picked


class KernelChoice:
    """The chosen kernel per (shape, candidates), cached in `path` (None: not cached)."""

    def __init__(self, path: Path | None, *, timer: Timer = time_kernels) -> None:
        self.path = path
        self._timer = timer
        self._machine = machine_key()
        self._entries: dict[str, Any] = self._read()
        self.timed = 0
        """Shapes timed in this process (0 when everything came from the cache)."""

    def choose(self, shapes: Mapping[str, Sequence[torch.Tensor]],
               candidates: Mapping[str, Sequence[str]]) -> dict[str, str]:
        """The kernel for each shape of `shapes` (weights of that shape), among its
        `candidates` that this torch build can run; timed when not cached."""
        chosen: dict[str, str] = {}
        changed = False
        for shape, weights in shapes.items():
            usable = [k for k in candidates[shape] if available(k)] or ["mkl"]
            key = f"{self._machine}|{shape}|{','.join(usable)}"
            entry = self._entries.get(key)
            if entry is None or entry.get("kernel") not in usable:
                entry = self._time(shape, usable, sample(weights))
                self._entries[key] = entry
                changed = True
            chosen[shape] = str(entry["kernel"])
        if changed:
            self._write()
        return chosen

    def _time(self, shape: str, usable: Sequence[str],
              weights: Sequence[torch.Tensor]) -> dict[str, Any]:
        self.timed += 1
        if len(usable) == 1:
            return {"kernel": usable[0], "us": {}}
        timings = self._timer(usable, weights)
        best = min(timings, key=timings.__getitem__) if timings else "mkl"
        log.info("linear %s: %s (µs for 1 + %d rows: %s)", shape, best, BATCH_ROWS,
                 ", ".join(f"{k} {v * 1e6:.0f}" for k, v in timings.items()))
        return {"kernel": best, "us": {k: round(v * 1e6, 1) for k, v in timings.items()}}

    def _read(self) -> dict[str, Any]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            log.warning("ignoring unreadable kernel choice cache %s", self.path)
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def _write(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(f"{self.path.name}.partial-{os.getpid()}")
            partial.write_text(json.dumps({"version": CACHE_VERSION,
                                           "entries": self._entries}, indent=1) + "\n")
            os.replace(partial, self.path)
        except OSError:
            log.warning("could not write the kernel choice cache %s", self.path,
                        exc_info=True)


def cache_name(location: str) -> str:
    """A file name for the kernel cache of a model that has no converted folder."""
    return "kernels-" + hashlib.sha256(location.encode()).hexdigest()[:16] + ".json"
