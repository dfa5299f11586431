"""Run a compiled step without holding Python's GIL.

torch 2.13's Python binding of AOTInductor's package loader (`AOTIModelPackageLoader`)
keeps the GIL for the whole call, so while a compiled decode step ran (24-90 ms here) the
event loop could not run at all: a 5 ms ticker woke 62 ms late on average, 244 ms at worst,
against 8 ms at worst beside the eager step. This tiny extension calls the same loader (its
C++ API is exported by libtorch) with the GIL released. It is built by `step_compiler`'s
child process (a minute of compiling torch's headers, never in the bot's process) next to the
compiled steps; the bot only imports a finished build, and without one it keeps torch's
binding.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

NAME = "bot_aoti_runner"
SOURCE = r"""
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

struct Runner {
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
  explicit Runner(const std::string& path)
      : loader(std::make_unique<torch::inductor::AOTIModelPackageLoader>(
            path, "model", false, 1, -1)) {}
  std::vector<at::Tensor> run(std::vector<at::Tensor> inputs) {
    pybind11::gil_scoped_release unlocked;  // the arguments are converted already
    return loader->boxed_run(std::move(inputs));
  }
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Runner>(m, "Runner")
      .def(pybind11::init<const std::string&>())
      .def("run", &Runner::run);
}
"""


def build(folder: Path) -> None:
    """Compile the extension into `folder` (in the compiler's child process)."""
    from torch.utils.cpp_extension import load_inline

    folder.mkdir(parents=True, exist_ok=True)
    load_inline(NAME, cpp_sources=[SOURCE], build_directory=str(folder),  # type: ignore[no-untyped-call]
                extra_cflags=["-O2"], verbose=False)


def runner_class(folder: Path) -> Any | None:
    """The extension's `Runner` if a build is in `folder`, else None (never builds)."""
    library = folder / f"{NAME}.so"
    if not library.is_file():
        return None
    try:
        spec = importlib.util.spec_from_file_location(NAME, library)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception:
        log.warning("could not load %s; compiled steps will hold the GIL", library,
                    exc_info=True)
        return None
    return module.Runner


def torch_version_folder(root: Path) -> Path:
    """Where the build for this torch lives under `root`."""
    return root / f"native-torch-{torch.__version__}"
