"""The in-process engine: a transformers model on torch, batching, KV cache and CPU kernels.

Nothing here is imported unless the bot runs its model in-process.
"""
