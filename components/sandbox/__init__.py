"""Shared sandbox for untrusted code: see core.py and docs/sandbox.md."""

from components.sandbox.core import (
    Sandbox,
    SandboxError,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailable,
    Workspace,
    isolation_mode,
)

__all__ = [
    "Sandbox",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "Workspace",
    "isolation_mode",
]
