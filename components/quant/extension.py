"""A C++ kernel compiled on first use with torch's `load_inline` (gcc, ninja), or None where it cannot be.

Both CPU kernels (`fused_cpu`, `int_kernel`) build this way: once per process, behind a lock, with an
environment switch that disables the build and the reason kept for the caller's fallback message.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Union


class InlineExtension:
    def __init__(
        self,
        name: str,
        source: Union[str, Callable[[], str]],
        functions: Sequence[str] | None,  # None: the source has its own PYBIND11_MODULE
        cflags: Sequence[str],
        disable_env: str,
    ):
        self.name, self.source = name, source
        self.functions = list(functions) if functions is not None else None
        self.cflags, self.disable_env = list(cflags), disable_env
        self._lock = threading.Lock()
        self._tried, self.module, self.reason = False, None, "not built yet"

    def load(self):
        """The compiled module, building it on the first call; None when it cannot be built here."""
        with self._lock:
            if self._tried:
                return self.module
            self._tried = True
            if os.environ.get(self.disable_env, "1") == "0":
                self.reason = f"disabled by {self.disable_env}=0"
                return None
            try:
                from torch.utils.cpp_extension import load_inline  # noqa: PLC0415  (heavy: only when a kernel is first needed)

                source = self.source() if callable(self.source) else self.source
                self.module = load_inline(
                    name=self.name,
                    cpp_sources=[source],
                    functions=self.functions,
                    extra_cflags=self.cflags,
                    extra_ldflags=["-fopenmp"],
                    verbose=False,
                )
            except Exception as exc:  # no compiler, no ninja, or a build error: callers fall back
                text = str(exc).strip()
                self.reason = f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}"
            return self.module
