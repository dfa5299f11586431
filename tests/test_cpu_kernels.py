"""CPU linear kernels, the per-shape kernel choice and its cache, on random weights and the
tiny model (the real-model quality guard is in tests/test_quality.py)."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from bot.config import QUANTIZE_MODES, Settings
from bot.engines.local import kernel_choice
from bot.engines.local.cpu_linear import QUANTIZE_MODES as ENGINE_MODES
from bot.engines.local.cpu_linear import convert_linears
from bot.engines.local.kernel_choice import KernelChoice
from bot.engines.local.linear_kernels import (
    ALL_KERNELS,
    CompactEmbedding,
    CpuLinear,
    available,
    quantize_rows,
    wrong_results,
)
from bot.engines.local.model_cache import kernel_cache_file
from bot.engines.local.model_source import ModelSource
from bot.errors import ConfigError

KERNELS = [k for k in ALL_KERNELS if available(k)]
TOLERANCE = {"mkl": 1e-6, "onednn": 1e-5, "bf16": 0.02, "int8": 0.03, "int8w": 0.02,
             "int4": 0.12}
"""Relative error allowed against fp32 `nn.Linear`."""


class FakeTimer:
    """Preset timings instead of real ones (no wall-clock in unit tests); counts calls."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, kernels: Sequence[str],
                 weights: Sequence[torch.Tensor]) -> dict[str, float]:
        self.calls.append(tuple(kernels))
        return {k: self.seconds[k] for k in kernels if k in self.seconds}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kernel", KERNELS)
def test_each_kernel_computes_what_nn_linear_does(kernel: str) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    layer = CpuLinear(linear.weight, linear.bias, kernel)
    with torch.inference_mode():
        for shape in [(1, 64), (1, 1, 64), (3, 64), (2, 5, 64), (40, 64), (70, 64)]:
            x = torch.randn(*shape)
            got, want = layer(x), linear(x)
            assert got.shape == want.shape
            assert relative_error(got, want) <= TOLERANCE[kernel], shape


def test_the_mkl_kernel_is_exactly_nn_linear_and_keeps_the_weight_itself() -> None:
    linear = torch.nn.Linear(32, 16)
    layer = CpuLinear(linear.weight, linear.bias, "mkl")
    x = torch.randn(5, 32)
    with torch.inference_mode():
        assert torch.equal(layer(x), linear(x))
    assert layer.weight.data_ptr() == linear.weight.data_ptr()  # one copy, not two


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_dropped_layer_frees_its_weight_at_once(kernel: str) -> None:
    """No reference cycle: the kernel timing's candidate layers (some sharing the loaded
    weights) must go when dropped, not when the garbage collector next runs."""
    import gc
    import weakref

    gc.disable()
    try:
        layer = CpuLinear(torch.randn(16, 32), None, kernel)
        gone = weakref.ref(layer)
        del layer
        assert gone() is None
    finally:
        gc.enable()


@pytest.mark.skipif("int8" not in KERNELS, reason="no oneDNN int8 linear in this torch")
def test_int8_rows_do_not_depend_on_the_rest_of_the_batch() -> None:
    torch.manual_seed(0)
    layer = CpuLinear(torch.randn(40, 64), None, "int8")
    rows = torch.randn(6, 64)
    rows[3] *= 50  # an outlier row must not change the others' quantization
    with torch.inference_mode():
        together = layer(rows)
        alone = torch.cat([layer(rows[i:i + 1]) for i in range(6)])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("kind", ["bf16", "int8"])
def test_a_compact_embedding_looks_up_close_to_the_fp32_table(kind: str) -> None:
    torch.manual_seed(0)
    table = torch.randn(50, 16)
    compact = CompactEmbedding(table, kind)
    ids = torch.tensor([[0, 7, 49], [3, 3, 1]])
    with torch.inference_mode():
        got = compact(ids)
    assert got.dtype == torch.float32
    assert relative_error(got, table[ids]) < 0.01


def test_long_inputs_are_padded_to_few_row_counts() -> None:
    from bot.engines.local.linear_kernels import _bucketed

    counts = {_bucketed(torch.zeros(n, 2)).shape[0] for n in range(1, 4097)}
    assert len(counts) <= 16 + 40
    for n in (1, 16, 17, 100, 1025, 4096):
        padded = _bucketed(torch.zeros(n, 2)).shape[0]
        assert n <= padded <= max(n * 1.25, 32)


def test_unknown_kernels_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown linear kernel"):
        CpuLinear(torch.randn(4, 4), None, "int3")


# -- the choice and its cache --------------------------------------------------------


def test_the_fastest_candidate_is_chosen_and_cached(tmp_path: Path) -> None:
    path = tmp_path / "kernels.json"
    timer = FakeTimer({"mkl": 3e-4, "onednn": 1e-4})
    weights = {"48x64": [torch.randn(48, 64)], "16x64": [torch.randn(16, 64)]}
    candidates = {"48x64": ("mkl", "onednn"), "16x64": ("mkl",)}
    first = KernelChoice(path, timer=timer)
    assert first.choose(weights, candidates) == {"48x64": "onednn", "16x64": "mkl"}
    assert timer.calls == [("mkl", "onednn")]  # a single candidate needs no timing
    assert first.timed == 2

    again = KernelChoice(path, timer=timer)
    assert again.choose(weights, candidates) == {"48x64": "onednn", "16x64": "mkl"}
    assert again.timed == 0 and len(timer.calls) == 1  # the second start reads the cache
    saved = json.loads(path.read_text())
    assert saved["version"] == kernel_choice.CACHE_VERSION
    assert [p.name for p in tmp_path.iterdir()] == ["kernels.json"]  # no partial file left


def test_another_machine_or_candidate_set_times_again(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "kernels.json"
    weights = {"48x64": [torch.randn(48, 64)]}
    KernelChoice(path, timer=FakeTimer({"mkl": 1e-4, "onednn": 3e-4})).choose(
        weights, {"48x64": ("mkl", "onednn")})
    monkeypatch.setattr(kernel_choice, "machine_key", lambda: "AMD EPYC|avx2,fma|x")
    amd = FakeTimer({"mkl": 3e-4, "onednn": 1e-4})
    assert KernelChoice(path, timer=amd).choose(
        weights, {"48x64": ("mkl", "onednn")}) == {"48x64": "onednn"}
    assert len(amd.calls) == 1
    wider = FakeTimer({"mkl": 3e-4, "onednn": 2e-4, "bf16": 1e-4, "int8": 1e-4})
    extra = next(k for k in ("bf16", "int8", "onednn") if available(k))
    assert KernelChoice(path, timer=wider).choose(
        weights, {"48x64": (extra, "mkl")}) == {"48x64": extra}
    entries = json.loads(path.read_text())["entries"]
    assert len(entries) == 3  # both machines and both candidate sets kept


def test_a_broken_cache_file_is_timed_again_and_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "kernels.json"
    path.write_text("{not json")
    timer = FakeTimer({"mkl": 2e-4, "onednn": 1e-4})
    choice = KernelChoice(path, timer=timer)
    assert choice.choose({"8x8": [torch.randn(8, 8)]}, {"8x8": ("mkl", "onednn")}) == {
        "8x8": "onednn"}
    assert len(timer.calls) == 1
    assert json.loads(path.read_text())["entries"]


class SaturatingInt8(torch.nn.Module):
    """int8 as oneDNN computes it on an AVX2-only CPU: inputs shifted to unsigned bytes,
    pairs of products added in saturating 16-bit sums (`vpmaddubsw`), the shift taken back
    out at the end."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.q, self.scale = quantize_rows(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        peak = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        unsigned = (x * (127 / peak)).round().long() + 128
        products = unsigned[:, None, :] * self.q.long()[None, :, :]
        pairs = (products[..., 0::2] + products[..., 1::2]).clamp(-32768, 32767)
        sums = pairs.sum(-1) - 128 * self.q.long().sum(1)
        return sums.float() * self.scale.T * (peak / 127)


class Exact(SaturatingInt8):
    """The same arithmetic without the saturation: what a VNNI kernel computes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        peak = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        q = (x * (127 / peak)).round()
        return (q @ self.q.float().T) * self.scale.T * (peak / 127)


def test_a_saturating_int8_kernel_is_caught() -> None:
    from bot.engines.local.linear_kernels import _probe_weight

    weight = _probe_weight()
    assert wrong_results(Exact(weight), weight, "int8") is None
    reason = wrong_results(SaturatingInt8(weight), weight, "int8")
    assert reason is not None and "relative error" in reason


class Zeros(torch.nn.Module):
    """A kernel that is fast because it computes nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], 48)


def wrong_onednn(weight: torch.Tensor, kernel: str) -> torch.nn.Module:
    return Zeros() if kernel == "onednn" else CpuLinear(weight, None, kernel)


def test_a_kernel_with_wrong_results_is_never_chosen(caplog: pytest.LogCaptureFixture) -> None:
    weights = [torch.randn(48, 64) for _ in range(3)]
    with caplog.at_level(logging.WARNING):
        timings = kernel_choice.time_kernels(["mkl", "onednn"], weights, build=wrong_onednn)
    assert set(timings) == {"mkl"}
    assert "linear kernel onednn computes wrong results here for 48x64" in caplog.text
    choice = KernelChoice(None, timer=functools.partial(kernel_choice.time_kernels,
                                                         build=wrong_onednn))
    assert choice.choose({"48x64": weights}, {"48x64": ("onednn", "mkl")}) == {
        "48x64": "mkl"}


def test_the_cache_key_names_what_torch_and_onednn_use() -> None:
    key = kernel_choice.machine_key()
    assert f"aten {torch.backends.cpu.get_cpu_capability()}" in key
    assert ("bf16" in key.split("|")[2]) == available("bf16")


def test_a_kernel_that_fails_is_no_candidate(tmp_path: Path) -> None:
    timer = FakeTimer({"mkl": 2e-4})  # onednn "failed": no timing for it
    choice = KernelChoice(None, timer=timer)
    assert choice.choose({"8x8": [torch.randn(8, 8)]}, {"8x8": ("mkl", "onednn")}) == {
        "8x8": "mkl"}


def test_real_timings_cover_every_candidate() -> None:
    weights = [torch.randn(48, 64) for _ in range(3)]
    timings = kernel_choice.time_kernels(KERNELS, weights)
    assert set(timings) == set(KERNELS)
    assert all(seconds > 0 for seconds in timings.values())


def test_the_choice_is_cached_next_to_the_converted_model(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    path = kernel_cache_file(ModelSource("gguf", str(gguf), "m"), tmp_path / "cache")
    assert path.name == "kernels.json"
    assert path.parent.parent == tmp_path / "cache"
    hub = kernel_cache_file(ModelSource("hub", "org/name", "org/name"), tmp_path / "cache")
    assert hub.parent == tmp_path / "cache" and hub.name.startswith("kernels-")


# -- converting a model ----------------------------------------------------------------


def test_off_mode_keeps_one_fp32_copy_and_the_same_logits(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    weight_bytes = sum(m.weight.nbytes for m in model.modules()
                       if isinstance(m, torch.nn.Linear))
    done = convert_linears(model, "off", KernelChoice(None, timer=FakeTimer(
        {"mkl": 1e-4, "onednn": 2e-4})))
    assert done.layers == 2 * 7 + 1  # 2 layers of 7, and the output head
    assert done.weight_bytes == weight_bytes
    assert set(done.kernels.values()) == {"mkl"}
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    with torch.inference_mode():
        assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-5)


def test_a_tied_head_in_fp32_shares_the_embedding_table(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, tie_word_embeddings=True)
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    timer = FakeTimer({"mkl": 2e-4, "onednn": 1e-4})
    done = convert_linears(model, "off", KernelChoice(None, timer=timer))
    assert done.kernels["head"] == "mkl"  # the only fp32 kernel that keeps the plain table
    head = model.get_output_embeddings()
    assert isinstance(head, CpuLinear)
    assert head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.mark.skipif("int8" not in KERNELS, reason="no oneDNN int8 linear in this torch")
def test_int8_all_mode_quantizes_the_layers_a_tied_head_and_its_embedding(
        tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, tie_word_embeddings=True)
    model.tie_weights()
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    timer = FakeTimer({"int8": 1e-5, "bf16": 5e-5, "mkl": 1e-4, "onednn": 2e-4})
    done = convert_linears(model, "int8-all", KernelChoice(None, timer=timer))
    assert done.kernels["head"] == "int8"
    assert done.embedding == "int8"
    assert set(done.kernels.values()) == {"int8"}
    assert isinstance(model.get_input_embeddings(), CompactEmbedding)
    with torch.inference_mode():
        after = model(input_ids=ids).logits
    assert relative_error(after, before) < 0.05


@pytest.mark.skipif("int8" not in KERNELS, reason="no oneDNN int8 linear in this torch")
def test_int8_mode_quantizes_the_head_first(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    timer = FakeTimer({"int8": 1e-5, "bf16": 5e-5, "mkl": 1e-4, "onednn": 2e-4})
    done = convert_linears(model, "int8", KernelChoice(None, timer=timer))
    assert done.kernels.pop("head") == "int8"
    assert set(done.kernels.values()) == {"bf16"}  # the other layers: at most bf16
    assert done.embedding == "int8"


@pytest.mark.skipif("int4" not in KERNELS, reason="no int4 kernel in this torch")
def test_int4_mode_puts_int4_in_the_layers_and_at_most_int8_in_the_head(
        tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, tie_word_embeddings=True)
    model.tie_weights()
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    timer = FakeTimer({"int4": 1e-6, "int8": 1e-5, "bf16": 5e-5, "mkl": 1e-4, "onednn": 2e-4})
    done = convert_linears(model, "int4", KernelChoice(None, timer=timer))
    head = done.kernels.pop("head")
    assert set(done.kernels.values()) == {"int4"}
    assert head == ("int8" if "int8" in KERNELS else "bf16" if "bf16" in KERNELS else "mkl")
    assert done.embedding == "int8" or head == "mkl"
    with torch.inference_mode():
        assert relative_error(model(input_ids=ids).logits, before) < 0.2


@pytest.mark.skipif("bf16" not in KERNELS, reason="oneDNN bf16 needs AVX-512 or AVX-NE-CONVERT")
def test_bf16_mode_never_chooses_int8(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    timer = FakeTimer({"int8": 1e-5, "bf16": 5e-5, "mkl": 1e-4, "onednn": 2e-4})
    done = convert_linears(model, "bf16", KernelChoice(None, timer=timer))
    assert set(done.kernels.values()) == {"bf16"}
    assert done.embedding == "bf16"  # untied: the embedding takes the mode's precision


def test_other_dtypes_are_left_as_they_were(tiny_model_dir: Path) -> None:
    doubles = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    assert convert_linears(doubles, "int8", KernelChoice(None, timer=FakeTimer({}))).layers == 0
    assert any(isinstance(m, torch.nn.Linear) for m in doubles.modules())


def test_model_quantize_setting() -> None:
    assert QUANTIZE_MODES == ("auto", *ENGINE_MODES)
    assert Settings.from_env({}).model_quantize == "auto"
    assert Settings.from_env({"MODEL_QUANTIZE": "INT8"}).model_quantize == "int8"
    assert Settings.from_env({"MODEL_QUANTIZE": "int4"}).model_quantize == "int4"
    with pytest.raises(ConfigError, match="MODEL_QUANTIZE"):
        Settings.from_env({"MODEL_QUANTIZE": "int3"})
