"""`python -m bot.bench`: the speed benchmark of issue #5, side by side in one process.

It measures, on the configured (by default the bundled) model: plain `model.generate` against
the worker on one request; 8 and 16 concurrent short requests against the same requests in
sequence; a follow-up turn after a long history with and without the prompt cache; a cold start
that converts the GGUF file against a warm start from the converted cache; the event loop's
delays while the worker decodes a full batch; and peak resident memory. It prints a table and
writes the figures as JSON. `docs/benchmarks.md` records a run.
"""
