"""One way for every agent flow to reach a language model (see base.LLM)."""
from components.llm.base import LLM, Completion, ScriptedLLM

__all__ = ["LLM", "Completion", "ScriptedLLM"]
