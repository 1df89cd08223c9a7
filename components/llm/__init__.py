"""One way for every agent flow to reach a language model (see base.LLM).

Backends: `embedded.EmbeddedLLM` (SmolLM2-135M-Instruct, offline), `openai_compat.OpenAICompatibleLLM`
(any OpenAI-compatible endpoint), `base.ScriptedLLM` (tests). Flows build them from the `llm` config
group with `tasks.llm.build_llm`; `factory` holds the `_target_`s.
"""

from components.llm.base import LLM, Completion, LLMError, LLMTimeoutError, ScriptedLLM, Usage, cut_at_stop
from components.llm.cache import ResponseCache

__all__ = ["LLM", "Completion", "LLMError", "LLMTimeoutError", "ResponseCache", "ScriptedLLM", "Usage", "cut_at_stop"]
