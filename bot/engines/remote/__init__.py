"""The remote engine: an OpenAI-compatible inference server (llama.cpp, vLLM, SGLang, Ollama)."""
