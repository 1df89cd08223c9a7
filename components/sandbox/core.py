"""Run untrusted code (agent actions, snippets) in a throwaway, isolated, resource-limited process.

Isolation (checked once per process by `isolation_mode()`, see docs/sandbox.md):
- Linux namespaces via util-linux `unshare`: a new network namespace (no interfaces but a down
  loopback: no network at all), mount namespace (a private root holding read-only system folders
  and one writable working folder; the project, /root, the host's /tmp are not there), PID namespace
  (the payload sees only itself; when it ends, everything it started is killed), UTS and IPC.
- As root on the host the payload also runs as a fresh unprivileged uid/gid with no capabilities
  and no_new_privs, which makes RLIMIT_NPROC (the process-count limit) effective. Without root, a
  user namespace maps the caller to root inside instead (limits then count the caller's processes).
- Resource limits (setrlimit): CPU seconds, address space, processes, file size, open files, no
  core dumps; a size-limited tmpfs for /tmp; a wall-clock timeout and an output cap enforced here,
  which kill the whole sandbox.
If namespaces are unavailable, `Sandbox` refuses to run (`SandboxUnavailable`) unless the limits
say `allow_unisolated=True`; such results carry `isolation="rlimits-only"`.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from components.checks import at_least
from components.processes import descendants
from components.sandbox import _jail
from components.sandbox.cgroup import CgroupSupport, SandboxCgroup

JAIL_SCRIPT = Path(__file__).with_name("_jail.py")
SYSTEM_DIRS = ("/usr", "/etc")  # read-only inside; /bin, /lib, /sbin, /lib64 follow as symlinks or binds
_MERGED_USR_LINKS = ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")


class SandboxError(RuntimeError):
    """Raised for bad sandbox requests (never for the payload's own failures: those are results)."""


class SandboxUnavailable(SandboxError):
    """The host cannot isolate the payload and `allow_unisolated` is off."""


@dataclass
class SandboxLimits:
    """What one sandboxed run may use. Defaults suit a short agent action or snippet."""

    wall_seconds: float = 20.0  # whole run, killed past it (covers sleeping and blocked payloads)
    cpu_seconds: int = 10  # RLIMIT_CPU per process: SIGXCPU then SIGKILL
    memory_bytes: int = 1 << 30  # the whole sandbox (cgroup, else the supervisor's budget), and RLIMIT_AS per process
    max_processes: int = 64  # the whole sandbox (cgroup pids.max, else the supervisor) and RLIMIT_NPROC per uid
    file_bytes: int = 16 << 20  # RLIMIT_FSIZE: no single file over 16 MiB
    open_files: int = 256  # RLIMIT_NOFILE
    output_bytes: int = 1 << 20  # stdout and stderr each; more is cut and the run killed
    tmp_bytes: int = 64 << 20  # the private /tmp and /dev/shm (tmpfs, in memory)
    work_bytes: int = 128 << 20  # the working folder (and a workspace) is a tmpfs of this size
    allow_unisolated: bool = False  # run with rlimits only where namespaces are missing (unsafe)
    expose_python_packages: bool = True  # bind the venv's site-packages read-only (numpy etc.)

    def __post_init__(self):
        at_least("wall_seconds", self.wall_seconds, 0.01)
        at_least("cpu_seconds", self.cpu_seconds, 1)
        at_least("memory_bytes", self.memory_bytes, 16 << 20)
        at_least("max_processes", self.max_processes, 2)
        for key in ("file_bytes", "output_bytes", "tmp_bytes", "work_bytes"):
            at_least(key, getattr(self, key), 4096)
        at_least("open_files", self.open_files, 16)


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    returncode: Optional[int]  # None when killed by a signal (see `signal`)
    timed_out: bool = False  # the wall clock ran out
    killed_reason: Optional[str] = None  # wall-clock timeout | cpu time limit | output limit | ...
    signal: Optional[int] = None
    cpu_seconds: float = 0.0
    max_rss_kb: int = 0
    wall_seconds: float = 0.0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    isolation: str = "namespaces"
    limits_enforced_by: str = "supervisor"  # whole-sandbox memory/process limits: 'cgroup v2|v1' or 'supervisor'
    sandbox_peak_memory_bytes: int = 0  # the whole sandbox's peak (cgroup only)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.killed_reason is None

    def describe(self) -> str:
        """One line for logs and agent observations."""
        if self.killed_reason:
            return f"killed: {self.killed_reason}"
        if self.signal:
            return f"killed by signal {signal.Signals(self.signal).name}"
        return f"exit code {self.returncode}"


_probe_lock = threading.Lock()
_probe_cache: dict[str, Optional[str]] = {}


def _unshare_prefix(user_namespace: bool) -> list[str]:
    flags = ["--mount", "--net", "--pid", "--uts", "--ipc", "--fork", "--kill-child"]
    if user_namespace:
        flags += ["--user", "--map-root-user"]
    return ["unshare", *flags, "--propagation", "private", "--"]


def cgroup_support() -> CgroupSupport:
    """What whole-sandbox limits the machine allows (probed once per process; root mode only)."""
    with _probe_lock:
        if "cgroup" not in _probe_cache:
            _probe_cache["cgroup"] = CgroupSupport.detect() if os.geteuid() == 0 else CgroupSupport(None)
        return _probe_cache["cgroup"]


def isolation_mode() -> Optional[str]:
    """'root' (namespaces + uid drop), 'userns' (namespaces in a user namespace) or None."""
    with _probe_lock:
        if "mode" not in _probe_cache:
            _probe_cache["mode"] = _probe()
        return _probe_cache["mode"]


def _probe() -> Optional[str]:
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return None
    candidates = [("root", False)] if os.geteuid() == 0 else []
    candidates.append(("userns", True))
    for mode, userns in candidates:
        try:
            done = subprocess.run(_unshare_prefix(userns) + ["true"], capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return mode
    return None


_uid_counter = itertools.count()


def _fresh_uid() -> int:
    """An unused-looking uid: RLIMIT_NPROC counts per uid, so each Sandbox gets its own."""
    return 200_000 + (os.getpid() % 50_000) * 1_000 + next(_uid_counter) % 1_000


class Workspace:
    """A working folder that persists across several runs of one Sandbox (an episode's state).

    `reset()` restores it to a copy of `fixture` (or empty). The payload sees it at `inside`. As
    root it is a tmpfs of `work_bytes` mounted on the host folder, so a payload cannot fill the
    disk and removing it is an unmount, whatever the payload built inside.
    """

    def __init__(self, sandbox: Sandbox, fixture: Optional[Path], inside: str, base: Optional[str]):
        self.sandbox = sandbox
        self.fixture = Path(fixture) if fixture else None
        self.inside = inside
        self._parent = Path(tempfile.mkdtemp(prefix="sandbox-ws-", dir=base))
        self.path = self._parent / "work"
        self._mounted = False
        try:
            self.reset()
        except BaseException:
            self.close()
            raise

    def reset(self) -> None:
        if self._mounted:
            _unmount(self.path)
            self._mounted = False
        remove_tree(self.path)
        self.path.mkdir()
        if self.sandbox.mode == "root":
            _jail.mount(
                "sandbox-work",
                str(self.path),
                "tmpfs",
                _jail.MS_NOSUID | _jail.MS_NODEV,
                f"size={self.sandbox.limits.work_bytes},mode=755",
            )
            self._mounted = True
        if self.fixture is not None:
            try:
                shutil.copytree(self.fixture, self.path, symlinks=True, dirs_exist_ok=True)
            except shutil.Error as exc:
                raise SandboxError(
                    f"the fixture {self.fixture} does not fit in the workspace "
                    f"(work_bytes={self.sandbox.limits.work_bytes}): {exc.args[0][:3]}"
                ) from None
        self.sandbox._give_to_payload(self.path)

    def close(self) -> None:
        """Remove the folder whatever is in it (unmount the tmpfs; an iterative walk otherwise)."""
        if getattr(self, "_mounted", False):
            _unmount(self.path)
            self._mounted = False
        remove_tree(self._parent)

    def __del__(self) -> None:  # a safety net: callers should close() (or use `with`)
        if getattr(self, "_parent", None) is not None:
            try:
                self.close()
            except Exception:  # noqa: BLE001 - never raise from a finalizer
                pass

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _unmount(path: Path) -> None:
    if _jail._libc.umount2(str(path).encode(), _jail.MNT_DETACH) != 0:
        err = _jail.ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point (already gone), ENOENT
            raise OSError(err, f"cannot unmount the workspace {path}: {os.strerror(err)}")


def remove_tree(path: Path) -> None:
    """Delete a folder tree of any depth and path length, folders the payload made unreadable
    included; a missing path is fine. Iterative, one open folder at a time (relative to its parent),
    so neither the recursion limit, PATH_MAX nor the open-file limit stops it."""
    path = Path(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(path)
        return
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    _make_traversable(path)
    fd, names = os.open(path, flags), []
    try:
        while True:
            folder = None
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        folder = entry.name
                        break
                    os.unlink(entry.name, dir_fd=fd)
            if folder is not None:
                _make_traversable(folder, fd)
                child = os.open(folder, flags, dir_fd=fd)
                os.close(fd)
                fd = child
                names.append(folder)
                continue
            if not names:
                break
            parent = os.open("..", flags, dir_fd=fd)
            os.close(fd)
            fd = parent
            os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def _make_traversable(name, dir_fd: Optional[int] = None) -> None:
    try:
        os.chmod(name, 0o700, dir_fd=dir_fd)
    except OSError:
        pass  # as root permissions do not stop us; otherwise the open below says why


Command = Union[str, Sequence[str]]


class Sandbox:
    """Runs commands and Python code isolated and limited; one instance = one payload identity.

    >>> box = Sandbox(SandboxLimits(wall_seconds=5))
    >>> box.run_python("print(6 * 7)").stdout
    '42\\n'
    """

    def __init__(self, limits: Optional[SandboxLimits] = None, base_dir: Optional[str] = None):
        self.limits = limits or SandboxLimits()
        self.base_dir = base_dir  # where throwaway folders go (default: the system temp folder)
        self.mode = isolation_mode()
        if self.mode is None and not self.limits.allow_unisolated:
            raise SandboxUnavailable(
                "cannot isolate untrusted code here: `unshare --mount --net --pid` failed (no namespace "
                "support). Refusing to run; set SandboxLimits(allow_unisolated=True) to run with "
                "resource limits only (no network or file-system isolation)"
            )
        self.uid = _fresh_uid() if self.mode == "root" else None
        self.gid = self.uid

    # ----------------------------------------------------------------- public API
    def workspace(self, fixture: Optional[Path] = None, inside: str = "/sandbox") -> Workspace:
        """A persistent working folder (copied from `fixture`) for several `run_*` calls."""
        return Workspace(self, fixture, inside, self.base_dir)

    def run_command(
        self,
        command: Command,
        stdin: Optional[str] = None,
        workspace: Optional[Workspace] = None,
        cwd: Optional[str] = None,
        env: Optional[dict[str, str]] = None,
    ) -> SandboxResult:
        """Run a bash string (`bash -c`) or an argv list. `cwd` is a path as the payload sees it."""
        argv = ["/bin/bash", "-c", command] if isinstance(command, str) else list(command)
        if not argv:
            raise SandboxError("empty command")
        return self._run(argv, stdin, workspace, cwd, env or {}, {})

    def run_python(
        self,
        code: str,
        stdin: Optional[str] = None,
        workspace: Optional[Workspace] = None,
        args: Sequence[str] = (),
        env: Optional[dict[str, str]] = None,
        site: bool = True,
    ) -> SandboxResult:
        """Run Python source with this project's interpreter (-I: no user site, no PYTHON* vars;
        `site=False` adds -S: no site-packages, a faster start for standard-library-only code)."""
        if not isinstance(code, str):
            raise SandboxError(f"code must be a str, got {type(code).__name__}")
        files = {"/sandbox_code/main.py": code}
        argv = [self._python(), "-I", *([] if site else ["-S"]), "/sandbox_code/main.py", *args]
        return self._run(argv, stdin, workspace, None, env or {}, files)

    # ----------------------------------------------------------------- internals
    def _python(self) -> str:
        # The prefixes are bound at their real paths, so the payload's mount table shows no host
        # path other than the ones it runs from (a symlinked venv would otherwise reveal its target).
        return (
            os.path.join(_real(sys.prefix), "bin", "python3")
            if self.limits.expose_python_packages
            else os.path.join(_real(sys.base_prefix), "bin", "python3")
        )

    def _give_to_payload(self, path: Path) -> None:
        """Make `path` (recursively) owned by the payload's uid so it can write there and only there."""
        if self.uid is None:
            return
        for root, dirs, files in os.walk(path):
            os.lchown(root, self.uid, self.gid)
            for name in dirs + files:
                os.lchown(os.path.join(root, name), self.uid, self.gid)

    def _binds(self, work: Path, inside: str) -> tuple[list, list]:
        binds: list = [[d, d, False] for d in SYSTEM_DIRS if os.path.isdir(d)]
        symlinks = []
        for link in _MERGED_USR_LINKS:
            if os.path.islink(link):
                symlinks.append([link, os.readlink(link)])
            elif os.path.isdir(link):
                binds.append([link, link, False])
        prefixes = {_real(sys.base_prefix)}
        if self.limits.expose_python_packages:
            prefixes.add(_real(sys.prefix))
        for prefix in sorted(prefixes):
            if not any(prefix.startswith(d + "/") for d in SYSTEM_DIRS):
                binds.append([prefix, prefix, False])
        if work is not None:
            binds.append([str(work), inside, True])
        return binds, symlinks

    def _masks(self) -> list[str]:
        """Folders hidden under an empty read-only tmpfs: the base interpreter's site-packages when
        the payload must not see installed packages."""
        if self.limits.expose_python_packages:
            return []
        paths = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})
        found = {_real(paths[k]) for k in ("purelib", "platlib") if os.path.isdir(paths[k])}
        return sorted(found)

    def _rlimits(self) -> dict:
        lim = self.limits
        return {
            "CPU": [lim.cpu_seconds, lim.cpu_seconds + 1],  # soft: SIGXCPU, hard: SIGKILL
            "AS": [lim.memory_bytes, lim.memory_bytes],
            "NPROC": [lim.max_processes, lim.max_processes],
            "FSIZE": [lim.file_bytes, lim.file_bytes],
            "NOFILE": [lim.open_files, lim.open_files],
            "CORE": [0, 0],
        }

    def _env(self, inside: str, extra: dict[str, str]) -> dict[str, str]:
        path = "/usr/local/bin:/usr/bin:/bin"
        if self.limits.expose_python_packages:
            path = f"{_real(sys.prefix)}/bin:{path}"
        env = {
            "PATH": path,
            "HOME": inside,
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
            # one thread each: BLAS thread pools reserve address space that RLIMIT_AS counts
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        env.update(extra)
        return env

    def _run(
        self,
        argv: list[str],
        stdin: Optional[str],
        workspace: Optional[Workspace],
        cwd: Optional[str],
        env: dict,
        files: dict,
    ) -> SandboxResult:
        control = Path(tempfile.mkdtemp(prefix="sandbox-run-", dir=self.base_dir))
        group: Optional[SandboxCgroup] = None
        try:
            work_tmpfs = None
            if workspace is not None:
                work, inside = workspace.path, workspace.inside
            elif self.mode is None:
                work, inside = control / "work", "/sandbox"
                work.mkdir()
            else:  # a tmpfs of work_bytes made inside the jail: nothing on the host disk, no host path
                work, inside = None, "/sandbox"
                work_tmpfs = {"path": inside, "bytes": self.limits.work_bytes, "uid": self.uid, "gid": self.gid}
            if self.mode is None:
                return self._run_unisolated(argv, stdin, work, env, files)
            (control / "root").mkdir()
            binds, symlinks = self._binds(work, inside)
            support = cgroup_support() if self.mode == "root" else CgroupSupport(None)
            if support.version is not None:
                group = SandboxCgroup(support, self.limits.memory_bytes, self.limits.max_processes)
            spec = {
                "root": str(control / "root"),
                "binds": binds,
                "symlinks": symlinks,
                "files": files,
                "tmp_bytes": self.limits.tmp_bytes,
                "status_path": str(control / "status.json"),
                "rlimits": self._rlimits(),
                "uid": self.uid,
                "gid": self.gid,
                "cwd": cwd or inside,
                "argv": argv,
                "env": self._env(inside, env),
                "work_tmpfs": work_tmpfs,
                "masks": self._masks(),
                "cgroup_procs": group.join_paths if group else [],
                "deny_user_namespaces": True,
            }
            (control / "spec.json").write_text(json.dumps(spec))
            launcher = _unshare_prefix(self.mode == "userns") + [
                sys.executable,
                "-I",
                "-S",
                str(JAIL_SCRIPT),
                str(control / "spec.json"),
            ]
            result = self._supervise(launcher, stdin, {"PATH": "/usr/bin:/bin"}, budget=group is None)
            self._read_status(control / "status.json", result)
            if group is not None:
                result.limits_enforced_by = f"cgroup v{support.version}"
                if group.hit_memory_limit():  # the kernel OOM-killed something in the sandbox
                    result.killed_reason = "memory limit"
                elif result.killed_reason is None and group.hit_process_limit():  # a fork was refused
                    result.killed_reason = "process limit"
                result.sandbox_peak_memory_bytes = group.peak_memory_bytes()
            return result
        finally:
            if group is not None:
                group.close()
            remove_tree(control)

    def _run_unisolated(self, argv, stdin, work: Path, env: dict, files: dict) -> SandboxResult:
        """Fallback without namespaces (only when allow_unisolated): rlimits + wall clock only."""
        limits = self._rlimits()

        def limit() -> None:  # runs in the child before exec
            for name, pair in limits.items():
                if name != "NPROC":  # as root it would not apply; as a user it would count our own
                    resource.setrlimit(getattr(resource, "RLIMIT_" + name), tuple(pair))

        env_full = self._env(str(work), env)
        for inside, text in files.items():  # no private root here: the code file goes beside the work
            (work.parent / Path(inside).name).write_text(text)
        argv = [str(work.parent / Path(a).name) if a in files else a for a in argv]
        result = self._supervise(argv, stdin, env_full, cwd=str(work), preexec=limit, budget=True)
        result.isolation = "rlimits-only"
        return result

    def _supervise(
        self,
        argv: list[str],
        stdin: Optional[str],
        env: dict,
        cwd: Optional[str] = None,
        preexec=None,
        budget: bool = False,
    ) -> SandboxResult:
        """Start the launcher in its own session; enforce wall clock and output caps; kill the group."""
        lim = self.limits
        start = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec,
        )
        if stdin is not None:
            threading.Thread(target=_feed, args=(proc.stdin, stdin.encode()), daemon=True).start()
        chunks = {proc.stdout: bytearray(), proc.stderr: bytearray()}
        truncated = {proc.stdout: False, proc.stderr: False}
        killed_reason = None
        with selectors.DefaultSelector() as sel:
            for pipe in chunks:
                sel.register(pipe, selectors.EVENT_READ)
            while sel.get_map():
                remaining = lim.wall_seconds - (time.monotonic() - start)
                if remaining <= 0:
                    killed_reason = "wall-clock timeout"
                    break
                if budget:  # no cgroup here: the whole sandbox's memory and processes, polled
                    killed_reason = _over_budget(proc.pid, lim)
                    if killed_reason:
                        break
                for key, _ in sel.select(timeout=min(remaining, 0.1 if budget else 0.5)):
                    data = os.read(key.fd, 65536)
                    if not data:
                        sel.unregister(key.fileobj)
                        continue
                    buf = chunks[key.fileobj]
                    room = lim.output_bytes - len(buf)
                    buf.extend(data[: max(room, 0)])
                    if len(data) > room:
                        truncated[key.fileobj] = True
                        killed_reason = "output limit"
                if killed_reason:
                    break
        if killed_reason:
            _kill_group(proc)
        try:
            proc.wait(timeout=max(lim.wall_seconds - (time.monotonic() - start), 0) + 5)
        except subprocess.TimeoutExpired:
            killed_reason = killed_reason or "wall-clock timeout"
            _kill_group(proc)
            proc.wait()
        for pipe in chunks:
            pipe.close()
        return SandboxResult(
            stdout=chunks[proc.stdout].decode("utf-8", "replace"),
            stderr=chunks[proc.stderr].decode("utf-8", "replace"),
            returncode=proc.returncode if proc.returncode is not None and proc.returncode >= 0 else None,
            signal=-proc.returncode if proc.returncode is not None and proc.returncode < 0 else None,
            timed_out=killed_reason == "wall-clock timeout",
            killed_reason=killed_reason,
            wall_seconds=time.monotonic() - start,
            stdout_truncated=truncated[proc.stdout],
            stderr_truncated=truncated[proc.stderr],
        )

    def _read_status(self, path: Path, result: SandboxResult) -> None:
        """Fill in the payload's own exit status (the launcher's is not the payload's)."""
        try:
            status = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            status = {}
        if "setup_error" in status:
            raise SandboxError(f"the sandbox could not be set up: {status['setup_error']}")
        if not status:  # killed before the payload finished: keep what _supervise decided
            result.returncode = None
            return
        result.returncode = status.get("exit_code")
        result.signal = status.get("signal")
        result.cpu_seconds = float(status.get("cpu_s") or 0.0)
        result.max_rss_kb = int(status.get("maxrss_kb") or 0)
        if result.killed_reason is None:
            result.killed_reason = _diagnose(result, self.limits, status.get("full") or ())


def _diagnose(result: SandboxResult, limits: SandboxLimits, full: Sequence[str] = ()) -> Optional[str]:
    """Name the limit a payload ran into, from its signal or its last words."""
    sig = result.signal
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and result.cpu_seconds >= limits.cpu_seconds):
        return "cpu time limit"
    if sig == signal.SIGXFSZ:
        return "file size limit"
    tail = result.stderr[-2000:]
    if "MemoryError" in tail or "Cannot allocate memory" in tail or "memory exhausted" in tail:
        return "memory limit"
    if "No space left on device" in tail or full:
        return "disk space limit (/tmp)" if {"/tmp", "/dev/shm"} & set(full) else "disk space limit (working folder)"
    if "File too large" in tail:
        return "file size limit"
    if "fork: retry" in tail or "Resource temporarily unavailable" in tail and "fork" in tail:
        return "process limit"
    return None


def _real(path: str) -> str:
    return os.path.realpath(path)


def _over_budget(launcher: int, limits: SandboxLimits) -> Optional[str]:
    """The supervisor's whole-sandbox budget where no cgroup is available: the resident memory and
    the number of every process under the launcher."""
    tree = descendants(launcher)
    if len(tree) > limits.max_processes + 2:  # + unshare and the jail helper
        return "process limit"
    page = os.sysconf("SC_PAGE_SIZE")
    resident = 0
    for pid in tree:
        try:
            resident += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return "memory limit" if resident > limits.memory_bytes else None


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except (BrokenPipeError, OSError):
        pass  # the payload stopped reading; not our error


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the sandbox: first its PID-1 helper (the kernel then kills the whole PID namespace and
    `unshare` exits once it is gone, so `proc.wait()` returning means nothing is left), then the
    launcher's process group for anything else (the unisolated fallback)."""
    for pid in _children_of(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _children_of(parent: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        if int(fields[1]) == parent:
            children.append(int(entry))
    return children
