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
        from bot.bench.engine_modes import report_rows

        out.extend(report_rows(modes))
    return out


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
