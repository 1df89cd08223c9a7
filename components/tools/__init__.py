"""Offline agent tools, each with a configurable latency: knowledge-base search, calculator, sandboxed Python."""

from components.tools.base import Tool, Toolbox, ToolResult
from components.tools.calculator import calculator_tool
from components.tools.knowledge_base import KnowledgeBase, build_knowledge_base, search_tool
from components.tools.python_eval import python_tool


def build_toolbox(
    kb_seed: int = 0,
    search_latency_s: float = 0.0,
    calculate_latency_s: float = 0.0,
    python_latency_s: float = 0.0,
    python_runner=None,
    python_wall_seconds: float = 10.0,
) -> Toolbox:
    """The three tools over the knowledge base invented from `kb_seed`."""
    kb = build_knowledge_base(kb_seed)
    return Toolbox(
        [
            search_tool(kb, search_latency_s),
            calculator_tool(calculate_latency_s),
            python_tool(python_latency_s, python_runner, python_wall_seconds),
        ]
    )


__all__ = [
    "Tool",
    "Toolbox",
    "ToolResult",
    "KnowledgeBase",
    "build_knowledge_base",
    "build_toolbox",
    "calculator_tool",
    "python_tool",
    "search_tool",
]
