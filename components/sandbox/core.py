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
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

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
    memory_bytes: int = 1 << 30  # RLIMIT_AS per process, 1 GiB: room for Python + numpy, stops blow-ups
    max_processes: int = 64  # RLIMIT_NPROC for the sandbox uid: a fork bomb stalls at 64
    file_bytes: int = 16 << 20  # RLIMIT_FSIZE: no single file over 16 MiB
    open_files: int = 256  # RLIMIT_NOFILE
    output_bytes: int = 1 << 20  # stdout and stderr each; more is cut and the run killed
    tmp_bytes: int = 64 << 20  # the private /tmp and /dev/shm (tmpfs, in memory)
    allow_unisolated: bool = False  # run with rlimits only where namespaces are missing (unsafe)
    expose_python_packages: bool = True  # bind the venv's site-packages read-only (numpy etc.)


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

    `reset()` restores it to a copy of `fixture` (or empty). The payload sees it at `inside`.
    """

    def __init__(self, sandbox: "Sandbox", fixture: Optional[Path], inside: str, base: Optional[str]):
        self.sandbox = sandbox
        self.fixture = Path(fixture) if fixture else None
        self.inside = inside
        self._parent = Path(tempfile.mkdtemp(prefix="sandbox-ws-", dir=base))
        self.path = self._parent / "work"
        self.reset()

    def reset(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)
        if self.fixture is not None:
            shutil.copytree(self.fixture, self.path, symlinks=True)
        else:
            self.path.mkdir()
        self.sandbox._give_to_payload(self.path)

    def close(self) -> None:
        shutil.rmtree(self._parent, ignore_errors=True)

    def __del__(self) -> None:  # a safety net: callers should close() (or use `with`)
        parent = getattr(self, "_parent", None)
        if parent is not None:
            shutil.rmtree(parent, ignore_errors=True)

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
                "resource limits only (no network or file-system isolation)")
        self.uid = _fresh_uid() if self.mode == "root" else None
        self.gid = self.uid

    # ----------------------------------------------------------------- public API
    def workspace(self, fixture: Optional[Path] = None, inside: str = "/sandbox") -> Workspace:
        """A persistent working folder (copied from `fixture`) for several `run_*` calls."""
        return Workspace(self, fixture, inside, self.base_dir)

    def run_command(self, command: Command, stdin: Optional[str] = None,
                    workspace: Optional[Workspace] = None, cwd: Optional[str] = None,
                    env: Optional[dict[str, str]] = None) -> SandboxResult:
        """Run a bash string (`bash -c`) or an argv list. `cwd` is a path as the payload sees it."""
        argv = ["/bin/bash", "-c", command] if isinstance(command, str) else list(command)
        if not argv:
            raise SandboxError("empty command")
        return self._run(argv, stdin, workspace, cwd, env or {}, {})

    def run_python(self, code: str, stdin: Optional[str] = None, workspace: Optional[Workspace] = None,
                   args: Sequence[str] = (), env: Optional[dict[str, str]] = None, site: bool = True) -> SandboxResult:
        """Run Python source with this project's interpreter (-I: no user site, no PYTHON* vars;
        `site=False` adds -S: no site-packages, a faster start for standard-library-only code)."""
        if not isinstance(code, str):
            raise SandboxError(f"code must be a str, got {type(code).__name__}")
        files = {"/sandbox_code/main.py": code}
        argv = [self._python(), "-I", *([] if site else ["-S"]), "/sandbox_code/main.py", *args]
        return self._run(argv, stdin, workspace, None, env or {}, files)

    # ----------------------------------------------------------------- internals
    def _python(self) -> str:
        return os.path.join(sys.prefix, "bin", "python3") if self.limits.expose_python_packages \
            else os.path.join(sys.base_prefix, "bin", "python3")

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
        prefixes = {sys.base_prefix}
        if self.limits.expose_python_packages:
            prefixes.add(sys.prefix)
        for prefix in sorted(prefixes):
            if not any(prefix.startswith(d + "/") for d in SYSTEM_DIRS):
                binds.append([prefix, prefix, False])
        binds.append([str(work), inside, True])
        return binds, symlinks

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
            path = f"{sys.prefix}/bin:{path}"
        env = {"PATH": path, "HOME": inside, "TMPDIR": "/tmp", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
               # one thread each: BLAS thread pools reserve address space that RLIMIT_AS counts
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        env.update(extra)
        return env

    def _run(self, argv: list[str], stdin: Optional[str], workspace: Optional[Workspace],
             cwd: Optional[str], env: dict, files: dict) -> SandboxResult:
        control = Path(tempfile.mkdtemp(prefix="sandbox-run-", dir=self.base_dir))
        try:
            if workspace is not None:
                work, inside = workspace.path, workspace.inside
            else:
                work, inside = control / "work", "/sandbox"
                work.mkdir()
                self._give_to_payload(work)
            if self.mode is None:
                return self._run_unisolated(argv, stdin, work, env, files)
            (control / "root").mkdir()
            binds, symlinks = self._binds(work, inside)
            spec = {
                "root": str(control / "root"), "binds": binds, "symlinks": symlinks, "files": files,
                "tmp_bytes": self.limits.tmp_bytes, "status_path": str(control / "status.json"),
                "rlimits": self._rlimits(), "uid": self.uid, "gid": self.gid,
                "cwd": cwd or inside, "argv": argv, "env": self._env(inside, env),
            }
            (control / "spec.json").write_text(json.dumps(spec))
            launcher = _unshare_prefix(self.mode == "userns") + [
                sys.executable, "-I", "-S", str(JAIL_SCRIPT), str(control / "spec.json")]
            result = self._supervise(launcher, stdin, {"PATH": "/usr/bin:/bin"})
            self._read_status(control / "status.json", result)
            return result
        finally:
            shutil.rmtree(control, ignore_errors=True)

    def _run_unisolated(self, argv, stdin, work: Path, env: dict, files: dict) -> SandboxResult:
        """Fallback without namespaces (only when allow_unisolated): rlimits + wall clock only."""
        import resource

        limits = self._rlimits()

        def limit() -> None:  # runs in the child before exec
            for name, pair in limits.items():
                if name != "NPROC":  # as root it would not apply; as a user it would count our own
                    resource.setrlimit(getattr(resource, "RLIMIT_" + name), tuple(pair))

        env_full = self._env(str(work), env)
        for inside, text in files.items():  # no private root here: the code file goes beside the work
            (work.parent / Path(inside).name).write_text(text)
        argv = [str(work.parent / Path(a).name) if a in files else a for a in argv]
        result = self._supervise(argv, stdin, env_full, cwd=str(work), preexec=limit)
        result.isolation = "rlimits-only"
        return result

    def _supervise(self, argv: list[str], stdin: Optional[str], env: dict, cwd: Optional[str] = None,
                   preexec=None) -> SandboxResult:
        """Start the launcher in its own session; enforce wall clock and output caps; kill the group."""
        lim = self.limits
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                                start_new_session=True, preexec_fn=preexec)
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
                for key, _ in sel.select(timeout=min(remaining, 0.5)):
                    data = os.read(key.fd, 65536)
                    if not data:
                        sel.unregister(key.fileobj)
                        continue
                    buf = chunks[key.fileobj]
                    room = lim.output_bytes - len(buf)
                    buf.extend(data[:max(room, 0)])
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
            timed_out=killed_reason == "wall-clock timeout", killed_reason=killed_reason,
            wall_seconds=time.monotonic() - start,
            stdout_truncated=truncated[proc.stdout], stderr_truncated=truncated[proc.stderr],
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
            result.killed_reason = _diagnose(result, self.limits)


def _diagnose(result: SandboxResult, limits: SandboxLimits) -> Optional[str]:
    """Name the limit a payload ran into, from its signal or its last words."""
    sig = result.signal
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and result.cpu_seconds >= limits.cpu_seconds):
        return "cpu time limit"
    if sig == signal.SIGXFSZ:
        return "file size limit"
    tail = result.stderr[-2000:]
    if "MemoryError" in tail or "Cannot allocate memory" in tail or "memory exhausted" in tail:
        return "memory limit"
    if "No space left on device" in tail:
        return "disk space limit (/tmp)"
    if "File too large" in tail:
        return "file size limit"
    if "fork: retry" in tail or "Resource temporarily unavailable" in tail and "fork" in tail:
        return "process limit"
    return None


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
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        if int(fields[1]) == parent:
            children.append(int(entry))
    return children
