"""Whole-sandbox memory and process limits through a control group (cgroup v2, else v1).

Per-process rlimits let 5 processes x 700 MB reach 3.5 GB under a "1 GiB" limit; a cgroup bounds
the sandbox as a whole: `memory.max` / `memory.limit_in_bytes` (the kernel OOM-kills inside the
group past it) and `pids.max` (fork fails past it). The group is created under this process's own
cgroup (so it stays inside whatever limits the host already set), the launcher joins it before it
forks anything, and `close()` kills whatever is left in it and removes it.

`CgroupSupport.detect()` says what the machine allows; with neither v2 controllers nor v1
`memory` + `pids` hierarchies writable, the supervisor enforces a total budget instead (core.py).
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CGROUP_ROOT = Path("/sys/fs/cgroup")
_names = itertools.count()


def _own_path(controller: str) -> Optional[str]:
    """This process's cgroup path for a v1 controller ('memory') or v2 ('' )."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller == "" and controllers == "" or controller and controller in controllers.split(","):
            return path
    return None


@dataclass(frozen=True)
class CgroupSupport:
    version: Optional[int]  # 2, 1, or None (no usable cgroup)
    memory_parent: Optional[Path] = None
    pids_parent: Optional[Path] = None

    @staticmethod
    def detect() -> CgroupSupport:
        v2 = _detect_v2()
        if v2 is not None:
            return v2
        v1 = _detect_v1()
        return v1 if v1 is not None else CgroupSupport(None)


def _writable_dir(path: Path) -> bool:
    probe = path / f"mlsys-probe-{os.getpid()}-{next(_names)}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        probe.rmdir()
    except OSError:
        pass
    return True


def _detect_v2() -> Optional[CgroupSupport]:
    for mount in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        controllers_file = mount / "cgroup.controllers"
        own = _own_path("")
        if not controllers_file.exists() or own is None:
            continue
        parent = mount / own.lstrip("/")
        try:
            available = (parent / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if {"memory", "pids"} <= set(available) and _writable_dir(parent):
            # A v2 group with processes may not also have children with controllers ("no internal
            # processes"): our sandboxes go in a sub-folder whose subtree_control enables both.
            base = parent / f"mlsys-sandboxes-{os.getpid()}"
            try:
                base.mkdir(exist_ok=True)
                (base / "cgroup.subtree_control").write_text("+memory +pids")
            except OSError:
                continue
            return CgroupSupport(2, base, base)
    return None


def _detect_v1() -> Optional[CgroupSupport]:
    parents = {}
    for controller in ("memory", "pids"):
        own = _own_path(controller)
        mount = CGROUP_ROOT / controller
        if own is None or not (mount / "cgroup.procs").exists():
            return None
        parent = mount / own.lstrip("/")
        if not _writable_dir(parent):
            return None
        parents[controller] = parent
    return CgroupSupport(1, parents["memory"], parents["pids"])


class SandboxCgroup:
    """One sandbox run's control group(s); `join_path`s get the launcher's pid before it execs."""

    def __init__(self, support: CgroupSupport, memory_bytes: int, max_processes: int):
        self.support = support
        name = f"mlsys-sandbox-{os.getpid()}-{next(_names)}"
        self.folders: list[Path] = []
        if support.version == 2:
            folder = support.memory_parent / name
            folder.mkdir()
            self.folders = [folder]
            (folder / "memory.max").write_text(str(memory_bytes))
            if (folder / "memory.swap.max").exists():
                (folder / "memory.swap.max").write_text("0")
            (folder / "pids.max").write_text(str(max_processes))
            self.memory, self.pids = folder, folder
        elif support.version == 1:
            self.memory, self.pids = support.memory_parent / name, support.pids_parent / name
            self.memory.mkdir()
            self.folders = [self.memory]
            self.pids.mkdir()
            self.folders.append(self.pids)
            (self.memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
            swap = self.memory / "memory.memsw.limit_in_bytes"
            if swap.exists():
                try:
                    swap.write_text(str(memory_bytes))
                except OSError:
                    pass
            (self.pids / "pids.max").write_text(str(max_processes))
        else:
            raise ValueError("no cgroup support on this machine")

    @property
    def join_paths(self) -> list[str]:
        return [str(folder / "cgroup.procs") for folder in self.folders]

    def hit_memory_limit(self) -> bool:
        """Whether the kernel OOM-killed a process of this group (reclaim at the limit alone is not)."""
        name = "memory.events" if self.support.version == 2 else "memory.oom_control"
        try:
            fields = (self.memory / name).read_text().split()
            counts = dict(zip(fields[::2], fields[1::2]))
            return int(counts.get("oom_kill", 0)) > 0
        except (OSError, ValueError):
            return False

    def hit_process_limit(self) -> bool:
        try:
            events = (self.pids / "pids.events").read_text().split()
            return dict(zip(events[::2], map(int, events[1::2]))).get("max", 0) > 0
        except (OSError, ValueError):
            return False

    def peak_memory_bytes(self) -> int:
        name = "memory.peak" if self.support.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.memory / name).read_text())
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        """Kill anything still in the group, then remove it (retried while the kernel lets go)."""
        deadline = time.monotonic() + 10
        for folder in self.folders:
            while folder.exists():
                try:
                    pids = [int(p) for p in (folder / "cgroup.procs").read_text().split()]
                except OSError:
                    pids = []
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    folder.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
