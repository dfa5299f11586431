"""The CPU engine's kernel tests again, as on an AVX2-only CPU (AMD EPYC without AVX-512).

Most cheap servers have AVX2 and FMA only: oneDNN's bf16 packing refuses them and its int8
kernels saturate there. `ATEN_CPU_CAPABILITY=avx2` makes ATen and inductor dispatch as on
such a CPU and `ONEDNN_MAX_CPU_ISA=AVX2` caps oneDNN the same way; both are read when torch
loads, so the tests run in a child process with them set.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
ENGINE_TESTS = ["tests/test_cpu_kernels.py", "tests/test_own_step.py"]
"""Test files whose kernels differ between AVX2 and AVX-512 (run in the child)."""

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="AVX2 is an x86 instruction set")


def run_avx2(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, **AVX2},
                          capture_output=True, text=True, check=False)


def test_the_emulation_takes_effect() -> None:
    """Without this the child run below could pass on AVX-512 paths and prove nothing."""
    done = run_avx2("-c", "import torch\n"
                    "from bot.engines.local.linear_kernels import available\n"
                    "print(torch.backends.cpu.get_cpu_capability(), available('bf16'), "
                    "available('int8'))")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["AVX2", "False", "False"]  # oneDNN bf16 and int8: off


@pytest.mark.slow
def test_the_kernel_tests_pass_as_on_an_avx2_only_cpu() -> None:
    done = run_avx2("-m", "pytest", "-q", "-p", "no:cacheprovider", *ENGINE_TESTS)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1]
