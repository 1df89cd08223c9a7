"""What an agent tool is: a named function with a description for the prompt and a configurable latency.

A tool returns a `ToolResult`: `value` is what a later call gets when it says `$N` (a number stays
a number, so `calculate("$1 + $2")` works), `text` is what the joiner / ReAct loop reads. A tool
failure is a result with `error` set, not an exception: the agent reads it and can recover.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass
class ToolResult:
    value: Any = None  # substituted for $N in later calls
    text: str = ""  # the observation shown to the model
    error: str | None = None
    seconds: float = 0.0  # wall time of the call, latency included

    @property
    def ok(self) -> bool:
        return self.error is None

    def __str__(self) -> str:
        return self.text if self.ok else f"Error: {self.error}"


@dataclass
class Tool:
    name: str
    description: str  # signature + one line of what it does and returns, shown to the planner
    fn: Callable[..., ToolResult]
    latency_s: float = 0.0  # added to every call: stands for a remote API's round trip

    def __call__(self, *args: Any, **kwargs: Any) -> ToolResult:
        start = time.perf_counter()
        if self.latency_s > 0:
            time.sleep(self.latency_s)
        try:
            result = self.fn(*args, **kwargs)
        except TypeError as err:  # wrong number/kind of arguments: tell the agent how to call it
            result = ToolResult(error=f"bad arguments for {self.name}: {err}. Usage: {self.description}")
        except ValueError as err:
            result = ToolResult(error=f"{self.name}: {err}")
        result.seconds = time.perf_counter() - start
        return result


class Toolbox:
    """The tools an agent may call, by name."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self.tools = {t.name: t for t in tools}

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def names(self) -> list[str]:
        return list(self.tools)

    def descriptions(self) -> dict[str, str]:
        """Each tool's name -> its description (what the planner's prompt lists)."""
        return {name: tool.description for name, tool in self.tools.items()}

    def describe(self) -> str:
        return "\n".join(f"{i}. {t.description}" for i, t in enumerate(self.tools.values(), 1))

    def call(self, name: str, args: tuple = (), kwargs: dict | None = None) -> ToolResult:
        if name not in self.tools:
            return ToolResult(error=f"unknown tool {name!r}; tools: {', '.join(self.tools)}")
        return self.tools[name](*args, **(kwargs or {}))
