"""The project's one way to import DGL: `dgl = import_dgl()`.

DGL 2.1.0 (the newest Linux wheel on PyPI, CPU-only) fails to import beside torch 2.13: the last
statement of `dgl/graphbolt/__init__.py` loads `libgraphbolt_pytorch_<torch version>.so`, which is
shipped only for torch 2.0-2.2.1, and no environment variable skips it. Everything else in DGL this
project uses (graphs, `dgl.nn`, `dgl.dataloading`, `dgl.sampling`) does not need that library.

The shim wraps the loader of the `dgl.graphbolt` module for the duration of `import dgl`: the module
body runs unchanged, and only the error raised from inside its `load_graphbolt()` call - the final
statement, after every name is defined - is absorbed. Nothing in site-packages is modified, any
other import error still propagates, and `GRAPHBOLT_LOADED` records what happened. GraphBolt's
samplers, `dgl.sparse`, UVA (`use_uva`, `pin_memory_inplace`) and CUDA stay unavailable, as they are
in this CPU build anyway.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import threading
import warnings
from types import ModuleType
from typing import Optional

import torch

_GRAPHBOLT = "dgl.graphbolt"
_lock = threading.Lock()
GRAPHBOLT_LOADED: Optional[bool] = None  # None until import_dgl() ran; then whether libgraphbolt loaded
GRAPHBOLT_ERROR: Optional[str] = None  # the absorbed error, for diagnostics


def _raised_by_load_graphbolt(exc: BaseException) -> bool:
    """True when the innermost frame of `exc` is graphbolt's own `load_graphbolt` function."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    code = tb.tb_frame.f_code
    return code.co_name == "load_graphbolt" and code.co_filename.replace(os.sep, "/").endswith(
        "dgl/graphbolt/__init__.py"
    )


class _TolerantGraphboltLoader(importlib.abc.Loader):
    """Runs `dgl.graphbolt` as usual; absorbs only the failure of its C++ library load."""

    def __init__(self, inner: importlib.abc.Loader):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        global GRAPHBOLT_LOADED, GRAPHBOLT_ERROR
        try:
            self.inner.exec_module(module)
            GRAPHBOLT_LOADED = True
        except (FileNotFoundError, ImportError, OSError, RuntimeError) as exc:
            if not _raised_by_load_graphbolt(exc):
                raise
            GRAPHBOLT_LOADED = False
            GRAPHBOLT_ERROR = f"{type(exc).__name__}: {exc}"


class _GraphboltFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _GRAPHBOLT:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _TolerantGraphboltLoader(spec.loader)
        return spec


def import_dgl() -> ModuleType:
    """Import and return `dgl`, tolerating the missing graphbolt library (see the module doc)."""
    if "dgl" in sys.modules and _GRAPHBOLT in sys.modules:
        return sys.modules["dgl"]
    # Without DGLBACKEND, DGL writes ~/.dgl/config.json on first import; this project always uses torch.
    os.environ.setdefault("DGLBACKEND", "pytorch")
    with _lock, warnings.catch_warnings():
        # graphbolt imports torchdata.datapipes, which warns that it is deprecated: not our concern.
        warnings.filterwarnings("ignore", message="(?s).*datapipes", category=UserWarning)
        finder = _GraphboltFinder()
        sys.meta_path.insert(0, finder)
        try:
            import dgl  # noqa: F401, PLC0415  (imported under the graphbolt shim)
            import dgl.dataloading  # noqa: F401, PLC0415  (under the shim)
            import dgl.nn  # noqa: F401, PLC0415  (under the shim)
        finally:
            sys.meta_path.remove(finder)
    return sys.modules["dgl"]


def dgl_supports_cuda() -> bool:
    """Whether DGL graphs can move to a GPU here (the PyPI DGL 2.1.0 build cannot)."""
    if not torch.cuda.is_available():
        return False
    dgl = import_dgl()
    try:
        dgl.graph(([0], [0])).to("cuda")
    except Exception:  # noqa: BLE001 - DGL raises DGLError "Device API cuda is not enabled"
        return False
    return True
