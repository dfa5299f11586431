"""The warm start of the own step (`stored_weights`): the first start of a GGUF model stores
the step's int4 weights, later starts read them back instead of building the fp32 model,
and answer exactly as the first start did; a damaged file is read as no file.

The "GGUF file" here is a header only, with the tiny model placed in its converted folder as
a first start would have left it (converting a real GGUF file is tested on the bundled model
in tests/test_real_model.py)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bot.engines.contract import GenerationRequest, SamplingParams
from bot.engines.local.backend import load_backend
from bot.engines.local.linear_kernels import available
from bot.engines.local.model_cache import cache_folder
from bot.engines.local.model_source import ModelSource
from bot.engines.local.step_backend import StepBackend
from tests.test_quantize_default import write_gguf

pytestmark = pytest.mark.skipif(not (available("int4") and available("int8w")),
                                reason="no int4 or int8 weight kernel in this torch")


@pytest.fixture
def gguf_source(tmp_path: Path, tiny_model_dir: Path) -> ModelSource:
    """A Q4_1 GGUF source whose converted folder already holds the tiny model."""
    source = ModelSource("gguf", str(write_gguf(tmp_path / "tiny.Q4_1.gguf", 3)), "tiny")
    folder = cache_folder(source, tmp_path / "models")
    shutil.copytree(tiny_model_dir, folder)
    (folder / ".complete").write_text("converted by the test\n")
    return source


def start(source: ModelSource, cache_dir: Path) -> StepBackend:
    backend = load_backend(source, device="cpu", dtype="auto", cache_dir=str(cache_dir),
                           bot_name="Bot", context_tokens=512, quantize="auto")
    assert isinstance(backend, StepBackend)
    return backend


def answer(backend: StepBackend) -> str:
    request = GenerationRequest([{"role": "user", "content": "what is the weather like?"}],
                                SamplingParams(max_new_tokens=16, temperature=0.0))
    try:
        return backend.generate(request, lambda _: None, lambda: False)
    finally:
        backend.close()


def stored_file(cache_dir: Path) -> Path:
    (path,) = cache_dir.glob("*/steps-int4-*/weights.safetensors")
    return path


def test_later_starts_read_the_stored_weights_and_answer_alike(
        gguf_source: ModelSource, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    models = tmp_path / "models"
    with caplog.at_level(logging.INFO):
        first = start(gguf_source, models)
    assert "stored the step's weights" in caplog.text
    assert "from the converted cache" in caplog.text  # the first start built the model
    first_flat = first.weights.flat
    first_reply = answer(first)
    assert stored_file(models).stat().st_size > 0

    caplog.clear()
    with caplog.at_level(logging.INFO):
        later = start(gguf_source, models)
    assert "the step's weights loaded from" in caplog.text
    assert "from the converted cache" not in caplog.text  # no fp32 model this time
    assert later.info.dtype == "int4 weights"
    assert all(torch.equal(a, b) for a, b in zip(first_flat, later.weights.flat, strict=True))
    assert later.endings.pad_id == first.endings.pad_id
    assert answer(later) == first_reply


def test_a_damaged_file_is_replaced_by_a_new_quantization(
        gguf_source: ModelSource, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    models = tmp_path / "models"
    reply = answer(start(gguf_source, models))
    path = stored_file(models)
    path.write_bytes(path.read_bytes()[:1000])  # cut short, as by a full disk

    with caplog.at_level(logging.INFO):
        again = start(gguf_source, models)
    assert "could not read the stored weights" in caplog.text
    assert "from the converted cache" in caplog.text
    assert answer(again) == reply
    assert stored_file(models).stat().st_size > 1000  # stored anew


def test_a_folder_model_never_stores_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A folder can hold another model under the same name tomorrow: nothing is kept."""
    backend = load_backend(ModelSource("folder", str(tiny_model_dir), "tiny"), device="cpu",
                           dtype="auto", cache_dir=str(tmp_path), bot_name="Bot",
                           context_tokens=512, quantize="int4")
    backend.close()
    assert not list(tmp_path.rglob("weights.safetensors"))


def test_a_warm_start_never_imports_transformers_modeling_code(
        gguf_source: ModelSource, tmp_path: Path) -> None:
    start(gguf_source, tmp_path / "models").close()  # the first start stores the weights
    script = (
        "import sys\n"
        "from bot.engines.local.model_source import ModelSource\n"
        "from tests.test_stored_weights import start\n"
        f"backend = start(ModelSource('gguf', {gguf_source.location!r}, 'tiny'), "
        f"__import__('pathlib').Path({str(tmp_path / 'models')!r}))\n"
        "print(backend.info.dtype)\n"
        "print(sorted(m for m in ('transformers.modeling_utils', 'sympy',"
        " 'transformers.models.auto.modeling_auto') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-2:] == ["int4 weights", "[]"]
