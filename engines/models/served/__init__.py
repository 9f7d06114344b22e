"""Models on inference servers: the ``openai:URL`` scheme (vLLM, SGLang, llama.cpp's server)."""

from engines.models.served import openai_compatible  # noqa: F401  (registers the openai: scheme)
