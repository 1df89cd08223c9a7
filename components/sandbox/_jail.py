"""The in-namespace half of the sandbox: build a private root, drop privileges, exec the payload.

Run by `Sandbox` as `unshare --mount --net --pid --uts --ipc --fork --kill-child -- python -I -S
_jail.py SPEC.json`, so this process is PID 1 of fresh mount/network/PID namespaces and still holds
root's capabilities there. It must stay a standalone script (standard library only, no project
imports): it runs before the file system it came from is hidden.

Steps: (1) mount a small tmpfs as the new root and bind into it, read-only, only the system folders
the payload needs (+ the writable working folder); (2) fresh /proc (this PID namespace only), a
minimal /dev and a size-limited /tmp; (3) pivot_root into it and detach the old root, so the host's
files (the project, /root, other users' /tmp) no longer exist for the payload; (4) fork the payload:
resource limits, an unprivileged uid/gid with no capabilities and no_new_privs, exec. PID 1 reaps
every orphan and, when the payload exits, writes its exit status + rusage to the status file opened
before the pivot; its exit tears down the namespace, killing anything the payload left running.
"""

import ctypes
import json
import os
import platform
import resource
import socket
import struct
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS = 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine())
DEV_NODES = ("null", "zero", "full", "random", "urandom")
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
CLONE_NEWUSER = 0x10000000
# (audit arch, unshare, clone, clone3) syscall numbers
SECCOMP_ARCH = {"x86_64": (0xC000003E, 272, 56, 435), "aarch64": (0xC00000B7, 97, 220, 435)}.get(platform.machine())

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data=None) -> None:
    enc = lambda s: s.encode() if isinstance(s, str) else s  # noqa: E731
    _check(
        _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
        f"mount {source} on {target}",
    )


def bind(host: str, target: str, writable: bool, devices: bool = False) -> None:
    if os.path.isdir(host):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(host, target, None, MS_BIND)  # not MS_REC: submounts of `host` stay hidden
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (0 if devices else MS_NODEV) | (0 if writable else MS_RDONLY)
    mount(None, target, None, flags)


def build_root(spec: dict) -> None:
    root = spec["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the host
    mount("sandbox-root", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=755")
    # The scratch tmpfs go first, the binds after: a project (and its venv) checked out under
    # /tmp must stay visible, not be shadowed by the private /tmp mounted over it.
    for scratch in ("/tmp", "/dev/shm"):
        os.makedirs(root + scratch, exist_ok=True)
        mount("sandbox-tmp", root + scratch, "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['tmp_bytes']},mode=1777")
    for host, inside, writable in spec["binds"]:
        bind(host, root + inside, writable)
    work = spec.get("work_tmpfs")
    if work:  # the run's working folder: a size-limited tmpfs owned by the payload, on no host disk
        os.makedirs(root + work["path"], exist_ok=True)
        owner = f",uid={work['uid']},gid={work['gid']}" if work.get("uid") is not None else ""
        mount(
            "sandbox-work", root + work["path"], "tmpfs", MS_NOSUID | MS_NODEV, f"size={work['bytes']},mode=755{owner}"
        )
    for folder in spec.get("masks", []):  # e.g. the base interpreter's site-packages: an empty, read-only folder
        if os.path.isdir(root + folder):
            mount("sandbox-mask", root + folder, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k,mode=555")
    for link, dest in spec["symlinks"]:
        os.symlink(dest, root + link)
    os.makedirs(root + "/proc")
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/dev", exist_ok=True)
    for node in DEV_NODES:
        if os.path.exists("/dev/" + node):
            bind("/dev/" + node, f"{root}/dev/{node}", True, devices=True)
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{root}/dev/{name}")
    os.symlink("/proc/self/fd", root + "/dev/fd")
    for inside, text in spec.get("files", {}).items():
        os.makedirs(os.path.dirname(root + inside), exist_ok=True)
        with open(root + inside, "w") as handle:
            handle.write(text)
    os.chdir(root)
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the old root")  # the host tree is gone now
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def run_payload(spec: dict) -> None:
    """In the forked child: limits, unprivileged identity, then exec (never returns)."""
    try:
        for name, (soft, hard) in spec["rlimits"].items():
            resource.setrlimit(getattr(resource, "RLIMIT_" + name), (soft, hard))
        _set_oom_score(0)  # the payload is what the cgroup's OOM killer should pick, not PID 1
        if spec["uid"] is not None:
            os.setgroups([])
            os.setgid(spec["gid"])
            os.setuid(spec["uid"])  # leaves root: every capability is dropped
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        if spec.get("deny_user_namespaces"):
            deny_user_namespaces()
        os.chdir(spec["cwd"])
        os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
    except BaseException as exc:  # noqa: BLE001 - report anything, then die
        os.write(2, f"sandbox: cannot start {spec['argv'][0]!r}: {exc}\n".encode())
    os._exit(127)


def _set_oom_score(value: int) -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write(str(value))
    except OSError:
        pass  # not permitted here (user-namespace mode): the kernel's default choice stands


def deny_user_namespaces() -> None:
    """A seccomp filter: unshare/clone with CLONE_NEWUSER fail with EPERM; clone3 (whose flags sit in
    memory a filter cannot read) fails with ENOSYS, so the C library falls back to clone. Without a
    nested user namespace the payload cannot become root of its own namespace, mount or unshare more."""
    if SECCOMP_ARCH is None:
        raise OSError(f"no seccomp filter for {platform.machine()}: refusing to run without it")
    arch, nr_unshare, nr_clone, nr_clone3 = SECCOMP_ARCH
    ld_w_abs, jeq_k, jset_k, ret_k = 0x20, 0x15, 0x45, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38

    def op(code, k, jt=0, jf=0):
        return struct.pack("HBBI", code, jt, jf, k)

    program = [
        op(ld_w_abs, 4),  # 0: arch
        op(jeq_k, arch, 0, 7),  # 1: another ABI -> 9 (allow)
        op(ld_w_abs, 0),  # 2: syscall number
        op(jeq_k, nr_clone3, 7, 0),  # 3: clone3 -> 11 (ENOSYS)
        op(jeq_k, nr_unshare, 1, 0),  # 4: unshare -> 6
        op(jeq_k, nr_clone, 0, 4),  # 5: clone -> 6, else -> 10 (allow)
        op(ld_w_abs, 16),  # 6: flags (low 32 bits of the first argument)
        op(jset_k, CLONE_NEWUSER, 0, 1),  # 7: CLONE_NEWUSER -> 8 (EPERM), else -> 9
        op(ret_k, eperm),  # 8
        op(ret_k, allow),  # 9
        op(ret_k, allow),  # 10
        op(ret_k, enosys),  # 11
    ]
    code = b"".join(program)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    fprog_buffer = ctypes.create_string_buffer(fprog, len(fprog))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog_buffer, 0, 0), "seccomp filter")


def full_filesystems(paths: list) -> list:
    """Which of the writable folders ran out of space (under 64 KiB left): names the disk limit hit."""
    full = []
    for path in paths:
        try:
            info = os.statvfs(path)
        except OSError:
            continue
        if info.f_bavail * info.f_frsize < 64 << 10:
            full.append(path)
    return full


def reap_until(child: int) -> dict:
    """PID 1 duty: wait for every process; return the payload's status when it exits."""
    while True:
        try:
            pid, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            return {"exit_code": None, "signal": None, "cpu_s": 0.0, "maxrss_kb": 0}
        if pid == child:
            return {
                "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "maxrss_kb": usage.ru_maxrss,
            }


def main() -> None:
    with open(sys.argv[1]) as handle:
        spec = json.load(handle)
    status_fd = os.open(spec["status_path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for procs in spec.get("cgroup_procs", []):  # before anything forks: the whole sandbox is bounded
            with open(procs, "w") as handle:
                handle.write("0")
        _set_oom_score(-1000)
        build_root(spec)
        socket.sethostname("sandbox")
    except OSError as exc:
        os.write(2, f"sandbox: setting up the isolated file system failed: {exc}\n".encode())
        os.write(status_fd, json.dumps({"setup_error": str(exc)}).encode())
        os._exit(125)
    child = os.fork()
    if child == 0:
        os.close(status_fd)
        run_payload(spec)
    status = reap_until(child)
    status["full"] = full_filesystems(["/tmp", "/dev/shm", spec["cwd"]])
    os.write(status_fd, json.dumps(status).encode())
    os.close(status_fd)
    # Exiting as PID 1 makes the kernel SIGKILL everything still running in this namespace.
    os._exit(0)


if __name__ == "__main__":
    main()
