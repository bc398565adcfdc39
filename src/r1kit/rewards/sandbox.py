"""Launching untrusted code: isolation detection, the hardened launch command, and a process handle.

Full isolation (``kind == "bwrap"``): when the launcher is root it first drops to a per-slot unprivileged uid
with ``setpriv`` (so root's capabilities and files such as /etc/shadow are out of reach, and RLIMIT_NPROC
counts one run only); ``bwrap`` is started with an *empty* environment (so /proc/1/environ leaks nothing) and
unshares every namespace (network included: only a down loopback), sees read-only /usr and the interpreter's
prefix, a fresh /proc and /dev, and writes only to a size-capped tmpfs working directory. Inside, the runner
sets RLIMIT_AS/CPU/FSIZE/NPROC/CORE before any candidate code runs. The whole tree is killed on the wall
clock: bwrap's process group is SIGKILLed, ``--die-with-parent`` takes the namespace's init with it, and the
kernel then kills every process left in the pid namespace.

Degraded isolation (``kind == "rlimits"``, when bwrap is missing or cannot create namespaces): same runner,
rlimits, empty environment, own session and temporary directory, uid drop when root; but NO network or
filesystem isolation. `sandbox_info()` says so and a warning is issued once.

Left out: seccomp filters, cgroup memory accounting (RLIMIT_AS is the memory limit), GPU access.
"""

from __future__ import annotations

import functools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from r1kit.errors import R1kitError

_RUNNER = Path(__file__).with_name("_sandbox_runner.py")
_SLOT_UID_BASE = 61000
_SLOTS = 256


class SandboxError(R1kitError):
    """The sandbox itself failed (could not start, broke its protocol): no verdict on the candidate."""


class SandboxTimeout(Exception):
    """The wall-clock limit passed while waiting for the sandbox."""


class SandboxDied(Exception):
    """The sandbox closed its channel (the candidate exited, was killed, or killed its runner)."""


@dataclass(frozen=True)
class Limits:
    """Per-run limits. Times in seconds, sizes in bytes unless named *_mb."""

    timeout: float = 5.0  # wall clock per test
    memory_mb: int = 1024  # RLIMIT_AS of the candidate process
    output_bytes: int = 1 << 20  # stdout cap per test; more is a runtime error
    file_bytes: int = 8 << 20  # RLIMIT_FSIZE and the tmpfs size
    nproc: int = 32  # processes the candidate's uid may hold (its namespace only under bwrap)


@dataclass(frozen=True)
class Isolation:
    kind: str  # "bwrap" or "rlimits"
    interpreter: str
    bwrap: str | None
    drop_uid: bool
    warnings: tuple[str, ...] = field(default=())


def _world_reachable(path: str) -> bool:
    """Can an unprivileged uid read `path` (every parent directory world-executable)?"""
    p = Path(path).resolve()
    for parent in [*reversed(p.parents), p]:
        if not os.stat(parent).st_mode & 0o005:
            return False
    return True


def _find_interpreter(drop_uid: bool) -> str:
    """A Python >= 3.10 that the sandbox uid can run: this interpreter's real binary, else system python3."""
    own = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    candidates = [own, "/usr/bin/python3"] if not drop_uid else ["/usr/bin/python3", own]
    for exe in candidates:
        if os.path.exists(exe) and (not drop_uid or _world_reachable(exe)):
            return os.path.realpath(exe)
    raise SandboxError("no Python interpreter reachable by an unprivileged uid (tried /usr/bin/python3)")


def _prefix_of(interpreter: str) -> str:
    return str(Path(interpreter).resolve().parent.parent)


@functools.lru_cache(maxsize=1)
def _runner_source() -> str:
    return _RUNNER.read_text()


@functools.lru_cache(maxsize=1)
def detect_isolation() -> Isolation:
    """Probes the machine once: is a hardened bwrap launch possible here?"""
    setpriv, bwrap = shutil.which("setpriv"), shutil.which("bwrap")
    root = os.geteuid() == 0
    drop_uid = root and setpriv is not None
    notes = []
    if root and not drop_uid:
        notes.append("running as root without setpriv: sandboxed code keeps root's uid")
    interpreter = _find_interpreter(drop_uid)
    if bwrap:
        iso = Isolation("bwrap", interpreter, bwrap, drop_uid, tuple(notes))
        try:
            proc = subprocess.run(_launch_argv(iso, 0, Limits()) + ["-c", "print(6*7)"], env={},
                                  capture_output=True, timeout=20, check=False)
            if proc.stdout.strip() == b"42":
                return iso
            notes.append(f"bwrap is installed but failed: {proc.stderr.decode(errors='replace')[:200].strip()}")
        except (OSError, subprocess.TimeoutExpired) as e:
            notes.append(f"bwrap is installed but failed: {e}")
    else:
        notes.append("bwrap not found (apt-get install bubblewrap)")
    notes.append("degraded sandbox: rlimits, empty environment and own temp dir only; "
                 "NO network or filesystem isolation")
    return Isolation("rlimits", interpreter, None, drop_uid, tuple(notes))


def sandbox_info() -> dict:
    """What protection is in force on this machine, for logs and `r1kit` diagnostics."""
    iso = detect_isolation()
    full = iso.kind == "bwrap"
    return {
        "isolation": iso.kind,
        "interpreter": iso.interpreter,
        "uid_drop": iso.drop_uid,
        "network": "isolated (own namespace)" if full else "HOST NETWORK",
        "filesystem": "read-only /usr + tmpfs workdir" if full else "host filesystem (uid permissions only)",
        "pid_namespace": full,
        "rlimits": ["AS", "CPU", "FSIZE", "NPROC", "CORE"],
        "environment": "empty",
        "warnings": list(iso.warnings),
    }


def process_limit(limits: Limits) -> int:
    """RLIMIT_NPROC for a run: the limit under bwrap or a per-slot uid, else effectively none."""
    iso = detect_isolation()
    # A shared uid outside a user namespace would make honest parallel runs fail with "Can't fork".
    return limits.nproc if iso.kind == "bwrap" or iso.drop_uid else 1 << 15


def _launch_argv(iso: Isolation, slot: int, limits: Limits, workdir: str | None = None) -> list[str]:
    """argv up to and including the interpreter; the caller appends the interpreter's arguments."""
    argv: list[str] = []
    if iso.drop_uid:
        uid = str(_SLOT_UID_BASE + slot)
        argv += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    if iso.kind == "bwrap":
        argv += [iso.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
                 "--ro-bind", "/usr", "/usr"]
        for name in ("bin", "lib", "lib64", "sbin"):
            p = Path("/") / name
            if p.is_symlink():
                argv += ["--symlink", os.readlink(p), str(p)]
            elif p.is_dir():
                argv += ["--ro-bind", str(p), str(p)]
        prefix = _prefix_of(iso.interpreter)
        if not prefix.startswith("/usr/"):
            argv += ["--ro-bind", prefix, prefix]
        argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(limits.file_bytes), "--tmpfs", "/tmp",
                 "--size", str(limits.file_bytes), "--tmpfs", "/sandbox", "--chdir", "/sandbox",
                 "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/sandbox",
                 "--setenv", "LANG", "C.UTF-8", "--"]
    return argv + [iso.interpreter, "-I", "-S"]


class _UidSlots:
    """Hands out slot numbers so concurrent runs never share a sandbox uid (thread-safe)."""

    def __init__(self, n: int):
        self._free = list(range(n))
        self._cond = threading.Condition()

    def acquire(self) -> int:
        with self._cond:
            while not self._free:
                self._cond.wait()
            return self._free.pop()

    def release(self, slot: int) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify()


_slots = _UidSlots(_SLOTS)


def _kill_uid(uid: int) -> None:
    """Degraded mode only: SIGKILL every process of a slot uid (nothing else runs as it)."""
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    os.kill(int(d), signal.SIGKILL)
            except OSError:
                pass


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class SandboxProcess:
    """One running sandbox speaking the runner's line protocol. Use as a context manager.

    `send(obj)` writes one JSON line; `recv(deadline)` returns the next JSON line (monotonic deadline),
    raising SandboxTimeout or SandboxDied. `close()` kills the whole process tree and frees the slot.
    """

    def __init__(self, request: dict, limits: Limits):
        self.iso = detect_isolation()
        if self.iso.kind != "bwrap":
            _warn_degraded(self.iso)
        self.slot = _slots.acquire()
        self.workdir = None
        try:
            if self.iso.kind != "bwrap":
                self.workdir = tempfile.mkdtemp(prefix="r1kit-sandbox-")
                if self.iso.drop_uid:
                    os.chown(self.workdir, _SLOT_UID_BASE + self.slot, _SLOT_UID_BASE + self.slot)
            argv = _launch_argv(self.iso, self.slot, limits) + ["-c", _runner_source()]
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, env={}, cwd=self.workdir or "/",
                                         start_new_session=True, close_fds=True)
        except BaseException:
            self._cleanup_dir()
            _slots.release(self.slot)
            raise
        self._buf = b""
        self._max_line = limits.output_bytes + (64 << 10)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.send(request)

    def send(self, obj: dict) -> None:
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise SandboxDied(str(e)) from None

    def recv(self, deadline: float) -> dict:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SandboxTimeout
            if not select.select([fd], [], [], left)[0]:
                continue
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                raise SandboxDied("sandbox closed its output")
            self._buf += chunk
            if len(self._buf) > self._max_line:
                raise SandboxDied("sandbox reply over the size cap")
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            obj = json.loads(line)
        except ValueError:
            raise SandboxDied("sandbox reply is not JSON") from None
        if not isinstance(obj, dict):
            raise SandboxDied("sandbox reply is not an object")
        return obj

    def close(self) -> None:
        if self.iso.kind == "bwrap" and self.proc.poll() is None:
            # Kill the namespace's init first (the kernel then kills everything in the pid namespace) and let
            # bwrap reap it; killing bwrap first would leave the init a zombie under the host's pid 1.
            for pid in _children(self.proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.iso.kind != "bwrap" and self.iso.drop_uid:
            _kill_uid(_SLOT_UID_BASE + self.slot)
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self._cleanup_dir()
        _slots.release(self.slot)

    def _cleanup_dir(self) -> None:
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@functools.lru_cache(maxsize=1)
def _warn_degraded(iso: Isolation) -> None:
    warnings.warn("r1kit sandbox: " + "; ".join(iso.warnings), RuntimeWarning, stacklevel=3)
