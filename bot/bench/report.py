"""The benchmark's table, with each figure next to its target from issue #5."""

from __future__ import annotations

from typing import Any

Row = tuple[str, str, str, str]


def _met(ok: bool) -> str:
    return "yes" if ok else "NO"


def rows(results: dict[str, Any]) -> list[Row]:
    """(measurement, figure, target, met) for every figure the run produced."""
    out: list[Row] = []
    single = results.get("single")
    if single:
        out.append(("1 request: plain model.generate",
                    f"{single['plain_generate_tok_s']:.1f} tok/s", "", ""))
        out.append(("1 request: our worker", f"{single['worker_tok_s']:.1f} tok/s "
                    f"({single['ratio']:.2f}x)", ">= 1.0x", _met(single["ratio"] >= 1.0)))
    for count, conc in sorted(results.get("concurrency", {}).items(), key=lambda kv: int(kv[0])):
        n = int(count)
        target = ">= 3.5x" if n == 8 else ""
        out.append((f"{n} concurrent vs sequential", f"{conc['concurrent_tok_s']:.1f} vs "
                    f"{conc['sequential_tok_s']:.1f} tok/s ({conc['ratio']:.2f}x)", target,
                    _met(conc["ratio"] >= 3.5) if target else ""))
        out.append((f"{n} concurrent: slowest first token", f"{conc['max_ttft_s']:.2f} s",
                    "<= 2 s" if n == 8 else "",
                    _met(conc["max_ttft_s"] <= 2.0) if n == 8 else ""))
        out.append((f"{n} concurrent: same text as sequential",
                    f"{conc['same_text']}/{conc.get('runs', n)} replies", "", ""))
    cache = results.get("prompt_cache")
    if cache:
        out.append((f"follow-up, {cache['prompt_tokens']}-token prompt: first token",
                    f"{cache['ttft_cached_s']:.3f} s cached vs {cache['ttft_uncached_s']:.3f} s "
                    f"({cache['ratio']:.1f}x)", ">= 5x", _met(cache["ratio"] >= 5)))
        out.append(("follow-up: same greedy text with cache", str(cache["same_text"]), "same",
                    _met(bool(cache["same_text"]))))
    starts = results.get("start")
    if starts and "skipped" not in starts:
        out.append(("model ready: cold (GGUF conversion) vs warm",
                    f"{starts['cold_s']:.1f} s vs {starts['warm_s']:.1f} s "
                    f"({starts['ratio']:.1f}x)", ">= 5x", _met(starts["ratio"] >= 5)))
    elif starts:
        out.append(("model ready: cold vs warm", "skipped: " + starts["skipped"], "", ""))
    lag = results.get("loop_delay_ms")
    if lag:
        out.append(("event loop delay at full batch", f"max {lag['max']:.1f} ms, "
                    f"p99 {lag['p99']:.1f} ms", "max < 50 ms", _met(lag["max"] < 50)))
    memory = results.get("peak_rss_mb")
    if memory:
        out.append(("resident memory", f"peak {memory['serving']:.0f} MiB serving "
                    f"({memory.get('serving_now', 0):.0f} MiB after), "
                    f"{memory['overall']:.0f} MiB with the start-up test", "", ""))
    modes = results.get("engine_modes")
    if modes:
        out.extend(engine_mode_rows(modes))
    return out


MODE_LIMITS = {"off": 0.01, "bf16": 0.03, "int8": 0.03, "int8-all": 0.03}
"""Largest relative drop in log-likelihood allowed per `MODEL_QUANTIZE` mode (issue #13)."""
MODE_TARGETS = {"rss_off_mib": 800, "rss_quantized_mib": 500, "single_ratio": 2.0,
                "llamacpp_ratio": 0.8}


def engine_mode_rows(modes: dict[str, Any]) -> list[Row]:
    """Rows for `bot.bench.report.table`: (measurement, figure, target, met)."""
    rows: list[Row] = []
    variants = modes.get("variants", {})
    concurrent = modes.get("options", {}).get("concurrent", 8)
    names = {"plain": "plain model.generate", "off": "MODEL_QUANTIZE=off (default)"}
    llamacpp = modes.get("llamacpp_concurrent_tok_s")
    for variant, f in variants.items():
        name = names.get(variant, f"MODEL_QUANTIZE={variant}")
        quantized = variant not in ("plain", "off")
        rss_target = MODE_TARGETS["rss_quantized_mib"] if quantized else MODE_TARGETS["rss_off_mib"]
        rows.append((f"{name}: resident memory serving", f"{f['rss_serving_mib']:.0f} MiB "
                     f"(peak {f['rss_peak_mib']:.0f})",
                     "" if variant == "plain" else f"<= {rss_target} MiB",
                     "" if variant == "plain" else
                     ("yes" if f["rss_serving_mib"] <= rss_target else "NO")))
        ratio = f.get("single_ratio", 0.0)
        rows.append((f"{name}: 1 request", f"{f['single_tok_s']:.1f} tok/s ({ratio:.2f}x)",
                     "" if variant == "plain" else ">= 2x plain",
                     "" if variant == "plain" else
                     ("yes" if ratio >= MODE_TARGETS["single_ratio"] else "NO")))
        conc = f"{f['concurrent_tok_s']:.1f} tok/s aggregate"
        target = met = ""
        if llamacpp and variant != "plain":
            share = f["concurrent_tok_s"] / llamacpp
            conc += f" ({share:.2f}x llama.cpp)"
            target, met = ">= 0.8x llama.cpp", "yes" if share >= 0.8 else "NO"
        rows.append((f"{name}: {concurrent} concurrent", conc, target, met))
        if f.get("ll_change") is not None and variant != "plain":
            limit = MODE_LIMITS.get(variant, 0.03)
            plain_loops = variants["plain"].get("degenerate_replies") or 0
            loops = f["degenerate_replies"] or 0
            rows.append((f"{name}: log-likelihood vs fp32",
                         f"{f['log_likelihood']:.4f} ({f['ll_change'] * 100:+.2f}% worse), "
                         f"{loops} of {concurrent + 1} replies degenerate "
                         f"(plain fp32: {plain_loops})",
                         f"<= {limit * 100:.0f}%, no more loops than plain",
                         "yes" if f["ll_change"] <= limit and loops <= plain_loops else "NO"))
        if variant == "off":
            rows.append((f"{name}: same greedy story as plain",
                         str(f["same_story_as_plain"]), "same",
                         "yes" if f["same_story_as_plain"] else "NO"))
    return rows


def table(results: dict[str, Any]) -> str:
    """A plain-text table (Markdown-compatible) of `rows`."""
    return format_table(rows(results))


def format_table(body: list[Row]) -> str:
    """(measurement, result, target, met) rows as a Markdown-compatible table."""
    header: Row = ("measurement", "result", "target", "met")
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(4)]

    def line(row: Row) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in body)])
