"""The benchmark's code paths on the tiny model, so `python -m bot.bench` cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.bench.__main__ import main
from bot.bench.report import rows


def test_the_benchmark_runs_end_to_end_on_the_tiny_model(
        tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["--quick", "--model", str(tiny_model_dir), "--out", str(out),
                 "--history-tokens", "120", "--max-new-tokens", "6", "--long-tokens", "8",
                 "--max-batch-size", "8"]) == 0
    results = json.loads(out.read_text())
    assert set(results["concurrency"]) == {"8", "16"}
    for run in results["concurrency"].values():
        assert run["same_text"] == run["runs"] == run["requests"]  # batched == one at a time
        assert len(run["ttft_s"]) == run["requests"]
    assert results["prompt_cache"]["same_text"] is True
    assert results["prompt_cache"]["reused_tokens"] > 0
    assert results["prompt_cache"]["uncached_reused_tokens"] == 0
    assert results["single"]["same_text"] is True
    assert results["start"] == {"skipped": "the model is a folder, not a GGUF file"}
    assert results["peak_rss_mb"]["overall"] >= results["peak_rss_mb"]["serving"] > 0
    assert results["loop_delay_ms"]["samples"] > 0
    modes = results["engine_modes"]["variants"]
    assert set(modes) == {"plain", "off", "int8"}
    assert modes["off"]["same_story_as_plain"] is True  # the default mode is exact
    for figures in modes.values():
        assert figures["rss_peak_mib"] >= figures["rss_serving_mib"] > 0
        assert figures["single_tok_s"] > 0 and figures["concurrent_tok_s"] > 0
        assert figures["log_likelihood"] < 0
    assert modes["off"]["kernels"] and modes["plain"]["kernels"] is None
    table = capsys.readouterr().out
    assert "MODEL_QUANTIZE=off (default): log-likelihood vs fp32" in table
    assert "| measurement" in table and "8 concurrent vs sequential" in table
    assert len(rows(results)) == len(table.splitlines()) - 2
