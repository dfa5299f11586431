"""Compiled decode steps: built in the background, cached on disk, swapped in when ready.

Compiling the own Llama step (`llama_step.DecodeStep`) takes minutes per batch size on a
small CPU, and torch.compile holds the GIL for much of it, so it never runs in the bot's
process: a child process (at a lower priority) exports the step for one number of slots and
has AOTInductor compile it into a package (``step-<slots>.pt2``), with the weights as
inputs, so the package holds code only and the child needs nothing but the model's shapes
(`llama_weights.dummy`). Meanwhile the bot serves with the eager step. Between decoding
steps the worker polls (`CompiledSteps.poll`); a finished package is loaded (well under a
second) and used from the next step on, and the next size starts building. Later starts
find the packages in the folder and load them at once.

The folder's name hashes what the code depends on: the model's shapes and weight kind, the
torch version, the instruction set torch dispatches to (`ATEN_CPU_CAPABILITY` included) and
this engine's step source, so a copy on another kind of CPU or after an upgrade builds anew.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch

from bot.engines.local import aoti_runner, int4, llama_step, llama_weights
from bot.engines.local.kernel_choice import machine_key
from bot.engines.local.llama_weights import LlamaShape, dummy

log = logging.getLogger(__name__)

MIN_COLUMNS = 16
MAX_COLUMNS = 1 << 17
"""The range of cache lengths one compiled step accepts (the length is a dynamic size)."""
START_DELAY = 30.0
"""Seconds after start-up before the first build: the first start converts the model and
times kernels, and its first answers should have the cores."""


def folder_for(root: Path, shape: LlamaShape, kind: str) -> Path:
    """Where the packages for this model, weight kind, CPU and code live under `root`."""
    source = b"".join(Path(module.__file__ or "").read_bytes()
                      for module in (llama_step, llama_weights, int4))
    key = "|".join([shape.to_json(), kind, machine_key(), hashlib.sha256(source).hexdigest()])
    return root / f"steps-{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def package_path(folder: Path, slots: int) -> Path:
    return folder / f"step-{slots}.pt2"


def build(shape: LlamaShape, kind: str, slots: int, out: Path) -> None:
    """Export the step for `slots` rows and compile it into the package `out` (in a child
    process: this takes minutes and much memory)."""
    step = llama_step.DecodeStep(shape, kind)
    weights = dummy(shape, kind)
    keys, values = llama_step.empty_cache(shape, slots, 2 * MIN_COLUMNS)
    rows = torch.zeros(slots, dtype=torch.long)
    columns = torch.export.Dim("columns", min=MIN_COLUMNS, max=MAX_COLUMNS)
    cache = {3: columns}
    with torch.inference_mode():
        program = torch.export.export(
            step, (rows, rows.clone(), keys, values, weights.flat),
            dynamic_shapes=(None, None, cache, cache, [None] * len(weights.flat)))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.stem}.partial-{os.getpid()}.pt2")
    from torch._inductor import aoti_compile_and_package

    aoti_compile_and_package(program, package_path=str(partial))
    os.replace(partial, out)


class _Loaded:
    """A loaded package, called like `llama_step.DecodeStep`: through `aoti_runner` (the GIL
    released) when its build is there, else torch's binding."""

    def __init__(self, path: Path, runner: Any | None) -> None:
        self.unlocked = runner is not None
        if runner is not None:
            self._run = runner(str(path)).run
        else:
            self._run = torch._C._aoti.AOTIModelPackageLoader(
                str(path), "model", False, 1, -1).boxed_run

    def __call__(self, tokens: torch.Tensor, lengths: torch.Tensor, keys: torch.Tensor,
                 values: torch.Tensor, flat: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = self._run([tokens, lengths, keys, values, *flat])
        return outputs


class CompiledSteps:
    """The compiled steps of one model, by number of slots; builds the missing ones.

    Builds run one at a time, the first `delay` seconds after start-up (None: never), from
    a timer thread and then from `poll` (the worker thread), so a lock guards the child.
    After a failed build (no C++ compiler, say) no more are tried: the steps stay eager.

    Args:
        folder: where the packages are (`folder_for`).
        slot_counts: the batch sizes to have a step for, built in this order.
    """

    def __init__(self, folder: Path, shape: LlamaShape, kind: str, slot_counts: Sequence[int],
                 *, delay: float | None = START_DELAY) -> None:
        self.folder = folder
        self.shape = shape
        self.kind = kind
        self._ready: dict[int, _Loaded] = {}
        self._failed: list[int] = []
        self._missing: list[int] = []
        self._child: tuple[int, subprocess.Popen[bytes], float, IO[bytes]] | None = None
        self._lock = threading.Lock()
        self._closed = False
        for slots in slot_counts:
            path = package_path(folder, slots)
            if path.is_file() and self._load(slots, path):
                continue
            self._missing.append(slots)
        if any(not step.unlocked for step in self._ready.values()):
            self._missing.insert(0, 0)  # 0: only build the GIL-free runner, then reload
        if self._ready:
            log.info("compiled decode steps loaded from %s: %s", folder, self.describe())
        self._timer: threading.Timer | None = None
        if delay is not None and self._missing:
            self._timer = threading.Timer(delay, self._start_next)
            self._timer.daemon = True
            self._timer.start()

    def get(self, slots: int) -> _Loaded | None:
        return self._ready.get(slots)

    def poll(self) -> None:
        """Between steps: take in a finished build and start the next (cheap otherwise)."""
        with self._lock:
            if self._child is None or self._child[1].poll() is None:
                return
            slots, process, started, output = self._child
            self._child = None
            output.close()
        if slots == 0:
            for ready in list(self._ready):
                self._load(ready, package_path(self.folder, ready))
            log.info("compiled decode steps now run with the GIL released: %s",
                     all(step.unlocked for step in self._ready.values()))
            self._start_next()
            return
        path = package_path(self.folder, slots)
        if process.returncode == 0 and path.is_file() and self._load(slots, path):
            log.info("decode step for %d slot(s) compiled in %.0f s and in use; %s", slots,
                     time.monotonic() - started, self.describe())
            self._start_next()
            return
        self._failed.append(slots)
        log.warning("compiling the decode step for %d slot(s) failed (exit %s; see %s); "
                    "decode steps not compiled yet stay eager", slots, process.returncode,
                    self._log_path(slots))

    def wait(self) -> None:
        """Block until the next build has started and ended, and take it in (tests, the
        benchmark)."""
        if self._timer is not None:
            self._timer.join()
        with self._lock:
            child = self._child
        if child is not None:
            child[1].wait()
        self.poll()

    @property
    def building(self) -> bool:
        """Whether a build runs or is still to start (none after a failure or `close`)."""
        with self._lock:
            return self._child is not None or (
                bool(self._missing) and not self._failed and not self._closed)

    def describe(self) -> str:
        """Which steps are compiled, for the logs and /status."""
        with self._lock:
            return self._describe()

    def _describe(self) -> str:
        parts = []
        if self._ready:
            parts.append("compiled decode steps for " + _counts(sorted(self._ready)))
        if self._child is not None and self._child[0] > 0:
            parts.append(f"compiling {self._child[0]}")
        waiting = [s for s in self._missing if s > 0]
        if waiting:
            parts.append(f"to compile: {_counts(waiting)}")
        if self._failed:
            parts.append(f"failed to compile: {_counts(self._failed)}")
        return "; ".join(parts) or "eager decode steps"

    def close(self) -> None:
        """Stop building: cancel the timer, end a running child."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            if self._child is not None:
                self._child[1].kill()
                self._child[1].wait()
                self._child[3].close()
                self._child = None

    def _load(self, slots: int, path: Path) -> bool:
        try:
            native = aoti_runner.torch_version_folder(self.folder.parent)
            self._ready[slots] = _Loaded(path, aoti_runner.runner_class(native))
        except Exception:
            log.warning("could not load the compiled step %s; building it again", path,
                        exc_info=True)
            path.unlink(missing_ok=True)
            return False
        return True

    def _log_path(self, slots: int) -> Path:
        return self.folder / f"step-{slots}.log"

    def _start_next(self) -> None:
        with self._lock:
            if self._closed or self._child is not None or not self._missing:
                return
            slots = self._missing.pop(0)
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                output = self._log_path(slots).open("wb")
                command = [sys.executable, "-m", "bot.engines.local.step_compiler",
                           "--shape", self.shape.to_json(), "--kind", self.kind,
                           "--slots", str(slots), "--out", str(package_path(self.folder, slots))]
                process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)
            except OSError:
                log.warning("cannot start compiling decode steps in %s", self.folder,
                            exc_info=True)
                self._failed.append(slots)
                return
            self._child = (slots, process, time.monotonic(), output)
        log.info("compiling %s in the background (pid %d)", f"the decode step for {slots} "
                 "slot(s)" if slots else "the GIL-free step runner", process.pid)


def _counts(slots: Sequence[int]) -> str:
    return ", ".join(str(s) for s in slots) + (" rows" if slots != [1] else " row")


def main(argv: list[str] | None = None) -> int:
    """``python -m bot.engines.local.step_compiler``: one package (run by `CompiledSteps`)."""
    parser = argparse.ArgumentParser(description="compile the own Llama decode step")
    parser.add_argument("--shape", required=True)
    parser.add_argument("--kind", choices=llama_weights.KINDS, required=True)
    parser.add_argument("--slots", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    os.nice(10)  # the bot serving on the same cores comes first
    native = aoti_runner.torch_version_folder(args.out.parent.parent)
    if not (native / f"{aoti_runner.NAME}.so").is_file():
        try:
            aoti_runner.build(native)
        except Exception as exc:  # no compiler headers: steps run with the GIL held
            print(f"could not build the GIL-free runner: {exc}", file=sys.stderr)
    if args.slots > 0:
        build(LlamaShape.from_json(args.shape), args.kind, args.slots, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
