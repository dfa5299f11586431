"""Everything that turns a prompt into text: the generation contract, the worker and its handles.

Implementations live in sub-packages: `local` (transformers + torch, in-process).
"""
