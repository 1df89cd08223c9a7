"""File-system state for the Bash reward: snapshots, changes against the fixture, content hashes.

Upstream tracks the container's file system with `git status --short` (a change per added, modified
or deleted path; a new directory is one entry) and hashes changed paths with `md5sum` / `md5deep -r`.
Here the episode's file system is a host folder, so the same facts come from walking it:

- a change is (path, "A" | "M" | "D"); a new or deleted directory is reported once, at its top
  (like git's `?? dir/`), and its contents are not listed separately;
- unlike git, empty directories and permission (mode) changes count: `mkdir x` and `chmod +x f`
  are real changes a task may ask for;
- the hash of a file is md5(contents) + its permission bits; of a directory, md5 over its sorted
  entries' hashes (md5deep -r).

Symlinks are recorded by their target, never followed; special files (FIFOs, sockets) by kind only,
never opened: the agent controls this folder and must not be able to hang or trick the host.
"""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

Entry = tuple  # ("file", md5, mode) | ("dir", mode) | ("link", target) | ("other", kind)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _entry(path: Path) -> Entry:
    info = os.lstat(path)
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        return ("link", os.readlink(path))
    if stat.S_ISDIR(info.st_mode):
        return ("dir", mode)
    if stat.S_ISREG(info.st_mode):
        return ("file", _md5(path), mode)
    return ("other", stat.S_IFMT(info.st_mode))


def snapshot(root: Path) -> dict[str, Entry]:
    """Every path under `root` (relative, '/'-separated) with its kind, content hash and mode."""
    root = Path(root)
    state: dict[str, Entry] = {}
    for folder, dirs, files in os.walk(root):  # os.walk does not follow symlinked directories
        for name in dirs + files:
            full = Path(folder, name)
            state[full.relative_to(root).as_posix()] = _entry(full)
    return state


def _has_ancestor_in(path: str, paths: set[str]) -> bool:
    parts = path.split("/")
    return any("/".join(parts[:i]) in paths for i in range(1, len(parts)))


def diff(before: dict[str, Entry], after: dict[str, Entry]) -> set[tuple[str, str]]:
    """Changes from `before` to `after`, with new/deleted directories collapsed to their top."""
    added = {p for p in after if p not in before}
    deleted = {p for p in before if p not in after}
    modified = {p for p in after if p in before and after[p] != before[p] and after[p][0] != "dir"}
    # a directory whose permission bits changed is a modification too
    modified |= {p for p in after if p in before and after[p][0] == "dir" and after[p] != before[p]}
    new_dirs = {p for p in added if after[p][0] == "dir"}
    gone_dirs = {p for p in deleted if before[p][0] == "dir"}
    changes = {(p + "/" if p in new_dirs else p, "A") for p in added if not _has_ancestor_in(p, new_dirs)}
    changes |= {(p + "/" if p in gone_dirs else p, "D") for p in deleted if not _has_ancestor_in(p, gone_dirs)}
    changes |= {(p, "M") for p in modified}
    return changes


def content_hash(root: Path, relative: str) -> str:
    """md5 of a changed path's final state: a file's bytes + mode, a directory's whole subtree."""
    target = Path(root) / relative.rstrip("/")
    if not os.path.lexists(target):
        return "missing"
    entry = _entry(target)
    if entry[0] != "dir":
        return repr(entry)
    sub = snapshot(target)
    return hashlib.md5(repr(sorted(sub.items())).encode()).hexdigest()
