"""The sandboxed Python evaluator tool: the snippet runs in `components.sandbox.Sandbox` (a fresh
subprocess in its own namespaces: no network, throwaway root, CPU/memory/process/time limits),
never in this process. Its stdout is the observation; the last line, if it parses as a number,
is the value a later `$N` receives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from components.sandbox import Sandbox, SandboxLimits
from components.tools.base import Tool, ToolResult


class PythonRunner(Protocol):
    """What the tool needs from a sandbox (components.sandbox.Sandbox has this method)."""

    def run_python(self, code: str) -> object: ...  # a SandboxResult: stdout, stderr, ok, describe()


def default_runner(wall_seconds: float = 10.0, memory_bytes: int = 512 << 20) -> PythonRunner:
    # No site-packages: arithmetic and the standard library are all an agent snippet needs here.
    return Sandbox(
        SandboxLimits(
            wall_seconds=wall_seconds,
            cpu_seconds=max(1, int(wall_seconds)),
            memory_bytes=memory_bytes,
            expose_python_packages=False,
        )
    )


def _number(text: str):
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def python_tool(
    latency_s: float = 0.0, runner: PythonRunner | Callable[[], PythonRunner] | None = None, wall_seconds: float = 10.0
) -> Tool:
    holder: dict = {}

    def sandbox() -> PythonRunner:  # built on first use: a toolbox that never runs Python needs no sandbox
        if "runner" not in holder:
            holder["runner"] = (
                runner()
                if callable(runner) and not hasattr(runner, "run_python")
                else (runner or default_runner(wall_seconds))
            )
        return holder["runner"]

    def run(code: str) -> ToolResult:
        if not isinstance(code, str) or not code.strip():
            raise ValueError("code must be a non-empty string of Python source")
        result = sandbox().run_python(code)
        out = result.stdout.strip()
        if not result.ok:
            tail = (result.stderr.strip().splitlines() or [result.describe()])[-1]
            return ToolResult(error=f"python snippet failed ({result.describe()}): {tail}", text=out)
        last = out.splitlines()[-1].strip() if out else ""
        return ToolResult(value=_number(last), text=out or "(no output)")

    return Tool(
        name="python",
        description="python(code: str) -> stdout: runs a short Python snippet in a sandbox (no network, "
        'no files) and returns what it prints; e.g. python("print(max([$1, $2]))").',
        fn=run,
        latency_s=latency_s,
    )
