"""Write the environments' assets once: SQLite databases and file-system fixtures (deterministic)."""

from __future__ import annotations

import json
from pathlib import Path

from components.intercode import databases, filesystems

ASSET_VERSION = 1  # bump when a generator changes, so cached assets are rebuilt


def prepare(base: Path, seed: int = 0) -> Path:
    """Build `base/databases/*.sqlite` and `base/filesystems/<fixture>/` unless already built for
    this version and seed; return `base`."""
    base = Path(base)
    stamp = base / "assets.json"
    wanted = {"version": ASSET_VERSION, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return base
    databases.build_all(base / "databases", seed)
    filesystems.build_all(base / "filesystems", seed)
    stamp.write_text(json.dumps(wanted))
    return base
