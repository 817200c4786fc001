"""Child processes of the local cluster: one process group each, a log file, a sure stop."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class ComponentError(RuntimeError):
    """A cluster component failed to start or to become ready."""


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the parent (thread) that started us exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open together, then released)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file ('' if it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as err:
        return err.errno == errno.EPERM
    # A zombie still answers signal 0; treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def group_alive(pgid: int) -> bool:
    """True if any process of process group ``pgid`` still runs (zombies excluded)."""
    try:
        os.killpg(pgid, 0)
    except OSError as err:
        if err.errno == errno.ESRCH:
            return False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields: state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_group(pgid: int, *, name: str, grace: float = 10.0) -> None:
    """SIGTERM the process group, wait ``grace`` seconds, then SIGKILL; verify it is gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        except PermissionError as err:
            raise ComponentError(f"cannot signal {name} (process group {pgid}): {err}") from err
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return
            time.sleep(0.05)
    raise ComponentError(f"{name} (process group {pgid}) survived SIGKILL")


class ManagedProcess:
    """A component started in its own session (so its whole group can be stopped)."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path, cwd: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self, env: dict[str, str] | None = None, *, die_with_parent: bool = False) -> None:
        """Start in a new session; with ``die_with_parent`` the kernel kills it if we die."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"# {' '.join(self.argv)}\n".encode())
            log.flush()
            try:
                self._popen = subprocess.Popen(
                    self.argv,
                    cwd=self.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=env,
                    preexec_fn=_die_with_parent if die_with_parent else None,  # noqa: PLW1509
                )
            except OSError as err:
                raise ComponentError(f"cannot start {self.name} ({self.argv[0]}): {err}") from err

    def exited(self) -> int | None:
        """The exit code if the process has exited, else None."""
        return self._popen.poll() if self._popen else None

    def wait_until(
        self,
        check: Callable[[], bool],
        *,
        timeout: float,
        what: str,
        interval: float = 0.1,
    ) -> None:
        """Poll ``check`` until it returns True; fail fast if the process dies."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.exited()
            if code is not None:
                raise ComponentError(
                    f"{self.name} exited with code {code} before it was {what}; "
                    f"last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            try:
                if check():
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise ComponentError(
                    f"{self.name} was not {what} within {timeout:.0f}s; "
                    f"last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            time.sleep(interval)

    def stop(self, *, grace: float = 10.0) -> None:
        if self._popen is None:
            return
        stop_group(self._popen.pid, name=self.name, grace=grace)
        try:
            self._popen.wait(timeout=5)
        except subprocess.TimeoutExpired as err:
            raise ComponentError(f"{self.name} (pid {self._popen.pid}) did not exit") from err
