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
For the same reason every walk here is iterative and bounded (`WalkLimits`: depth, entries, bytes
hashed): a tree past a limit raises `WorkspaceTooLarge`, whose message the environment shows the
agent, and `remove_tree` deletes any tree (any depth, unwritable folders) without recursion.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

Entry = tuple  # ("file", md5, mode) | ("dir", mode) | ("link", target) | ("other", kind)


@dataclass(frozen=True)
class WalkLimits:
    """How far a host-side walk of an agent's workspace goes before it gives up."""

    max_depth: int = 64  # folder levels below the root (task fixtures use a handful)
    max_entries: int = 100_000  # paths listed
    max_bytes: int = 512 << 20  # file bytes read for hashing


class WorkspaceTooLarge(Exception):
    """A walk reached one of its limits; the message says which, for the agent and the user."""


def _md5(path: str, budget: list[int], limits: WalkLimits) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            budget[0] += len(block)
            if budget[0] > limits.max_bytes:
                raise WorkspaceTooLarge(
                    f"workspace too large: more than {limits.max_bytes >> 20} MiB of files to compare"
                )
            digest.update(block)
    return digest.hexdigest()


def _entry(path: str, budget: list[int], limits: WalkLimits) -> Entry:
    info = os.lstat(path)
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        return ("link", os.readlink(path))
    if stat.S_ISDIR(info.st_mode):
        return ("dir", mode)
    if stat.S_ISREG(info.st_mode):
        try:
            return ("file", _md5(path, budget, limits), mode)
        except PermissionError:  # the agent made it unreadable (only without root): its mode still counts
            return ("file", "unreadable", mode)
    return ("other", stat.S_IFMT(info.st_mode))


def snapshot(root: Path, limits: WalkLimits = WalkLimits()) -> dict[str, Entry]:
    """Every path under `root` (relative, '/'-separated) with its kind, content hash and mode.
    Iterative, never follows symlinks, and raises WorkspaceTooLarge past `limits`."""
    root_text = os.fspath(root)
    state: dict[str, Entry] = {}
    budget = [0]  # bytes hashed so far
    pending = [("", 0)]  # (relative folder, depth)
    while pending:
        folder, depth = pending.pop()
        try:
            with os.scandir(os.path.join(root_text, folder) if folder else root_text) as listing:
                names = sorted(item.name for item in listing)
        except PermissionError:  # an unreadable folder: its own entry (and mode) is all there is to see
            continue
        except OSError as err:
            if err.errno == errno.ENAMETOOLONG:
                raise WorkspaceTooLarge(
                    f"workspace too deep: a path under {folder[:80]}... is longer than the system allows"
                ) from None
            raise
        for name in names:
            relative = f"{folder}/{name}" if folder else name
            if len(state) >= limits.max_entries:
                raise WorkspaceTooLarge(f"workspace too large: more than {limits.max_entries} files and folders")
            entry = _entry(os.path.join(root_text, relative), budget, limits)
            state[relative] = entry
            if entry[0] == "dir":
                if depth + 1 > limits.max_depth:
                    raise WorkspaceTooLarge(
                        f"workspace too deep: {relative[:80]}... is more than {limits.max_depth} folder levels down"
                    )
                pending.append((relative, depth + 1))
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


def hashes_of(state: dict[str, Entry], paths: list[str]) -> dict[str, str]:
    """Content hash of each path from a snapshot (no second walk): a file's bytes + mode, a directory's
    whole subtree (md5 over its sorted entries, keyed relative to it), "missing" if absent."""
    keys = sorted(state)
    out = {}
    for path in paths:
        relative = path.rstrip("/")
        entry = state.get(relative)
        if entry is None:
            out[path] = "missing"
        elif entry[0] != "dir":
            out[path] = repr(entry)
        else:
            prefix = relative + "/"
            first = bisect.bisect_left(keys, prefix)
            last = bisect.bisect_left(keys, relative + "0")  # "0" sorts right after "/"
            sub = [(key[len(prefix) :], state[key]) for key in keys[first:last]]
            out[path] = hashlib.md5(repr(sorted(sub)).encode()).hexdigest()
    return out


def content_hash(root: Path, relative: str, limits: WalkLimits = WalkLimits()) -> str:
    """md5 of one path's final state under `root` (see hashes_of)."""
    target = Path(root) / relative.rstrip("/")
    if not os.path.lexists(target):
        return "missing"
    entry = _entry(os.fspath(target), [0], limits)
    if entry[0] != "dir":
        return repr(entry)
    return hashes_of({"d": entry, **{f"d/{k}": v for k, v in snapshot(target, limits).items()}}, ["d/"])["d/"]
