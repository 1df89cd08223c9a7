"""`Closeable`: a resource that is closed by `close()` or by leaving a `with` block."""

from __future__ import annotations


class Closeable:
    """`with x:` closes `x` on the way out, whatever happened; subclasses override `close()`."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
