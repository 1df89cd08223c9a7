"""Offline agent tools, each with a configurable latency: knowledge-base search, calculator, sandboxed Python."""

import functools
from dataclasses import astuple, dataclass

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


@dataclass
class ToolsConfig:
    """The offline tools and their latencies (a latency stands for a remote API's round trip)."""

    kb_seed: int = 0  # which invented knowledge base (entities and numbers) to search
    search_latency_s: float = 0.5  # a web/Wikipedia search takes ~0.3-1 s; the paper's tools are remote
    calculate_latency_s: float = 0.05  # local arithmetic: near-instant
    python_latency_s: float = 0.0  # the sandbox's own start-up (~0.2 s) is real latency already
    python_wall_s: float = 10.0  # a snippet is killed past this

    def build(self) -> Toolbox:
        """A new toolbox with these tools (toolbox_for: one per process and config)."""
        return build_toolbox(
            self.kb_seed,
            self.search_latency_s,
            self.calculate_latency_s,
            self.python_latency_s,
            python_wall_seconds=self.python_wall_s,
        )


def toolbox_for(tools: ToolsConfig) -> Toolbox:
    """The toolbox `tools` describes, built once per process and config (the knowledge base too):
    a Prefect task or a Dask worker gets the picklable config and reuses its own toolbox."""
    return _toolbox(*astuple(tools))


@functools.lru_cache(maxsize=8)
def _toolbox(*fields) -> Toolbox:
    return ToolsConfig(*fields).build()


__all__ = [
    "ToolsConfig",
    "toolbox_for",
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
