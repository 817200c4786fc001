"""The operator as a local process under a ServiceAccount kubeconfig (tests, the demo)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "examples" / "operator-config.yaml"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


PASSES_METRIC = "magistral_operator_endpoint_passes_total"


def endpoint_passes(
    port: int, namespace: str | None = None, name: str | None = None
) -> float | None:
    """The passes the operator completed, from its /metrics on `port` (`--metrics-port`): of
    one endpoint when `namespace` and `name` are given, else of all (None: no answer)."""
    try:
        # Generous: a busy operator (a pass, a restart) or a stall of the machine is slow to
        # answer, and a miss would read as "no passes".
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    labels = [f'namespace="{namespace}"'] if namespace is not None else []
    labels += [f'endpoint="{name}"'] if name is not None else []
    return sum(
        (
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(PASSES_METRIC + "{") and all(label in line for label in labels)
        ),
        0.0,
    )


LOG_STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] ")
"""The time stamp that starts each line of the operator's log (its milliseconds may read 403)."""


def refused_requests(log: str) -> list[str]:
    """The lines of an operator log that report a request the API server refused (403,
    Forbidden: kopf and the client log a refused list, watch or write so), time stamps left
    out of the search."""
    return [
        line
        for line in log.splitlines()
        if re.search(r"\b403\b|[Ff]orbidden", LOG_STAMP.sub("", line))
    ]


class OperatorProcess:
    """`magistral-operator run` in a subprocess; start, stop, kill, restart."""

    def __init__(
        self,
        *,
        kubeconfig: Path,
        log_file: Path,
        config: Path = DEFAULT_CONFIG,
        resync_seconds: float = 3.0,
        scrape_seconds: float | None = None,
        namespaces: tuple[str, ...] = (),
        extra_args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
        metrics: bool = False,
    ) -> None:
        """``metrics``: serve the operator's /metrics on a free loopback port, chosen anew at
        each start (``metrics_port``; ``passes`` reads it)."""
        self.kubeconfig = kubeconfig
        self.extra_args = extra_args
        self.extra_env = dict(extra_env or {})
        self.log_file = log_file
        self.config = config
        self.resync_seconds = resync_seconds
        # The demand collector's period (kube/collector.py); the tests read as often as they
        # resync, so a pass sees what the pods answered about as soon as before the collector.
        self.scrape_seconds = resync_seconds if scrape_seconds is None else scrape_seconds
        self.namespaces = namespaces
        self.process: subprocess.Popen[bytes] | None = None
        self.health_port = 0
        self.metrics = metrics
        self.metrics_port = 0

    def passes(self, namespace: str, name: str) -> float | None:
        """The passes this process completed of one endpoint (None: no /metrics answer, or
        started without ``metrics``): the proof that it ran while a test waited."""
        if not self.metrics_port:
            return None
        return endpoint_passes(self.metrics_port, namespace, name)

    def start(self, *, timeout: float = 60.0) -> None:
        """Start and wait for kopf's liveness endpoint to answer."""
        self.health_port = free_port()
        argv = [
            sys.executable,
            "-m",
            "magistral_operator.cli",
            "run",
            "--config",
            str(self.config),
            "--liveness",
            f"http://127.0.0.1:{self.health_port}/healthz",
        ]
        for ns in self.namespaces:
            argv += ["--namespace", ns]
        if self.metrics:
            self.metrics_port = free_port()
            argv += ["--metrics-port", str(self.metrics_port)]
        argv += list(self.extra_args)
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "MAGISTRAL_RESYNC_SECONDS": str(self.resync_seconds),
            "MAGISTRAL_SCRAPE_SECONDS": str(self.scrape_seconds),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"operator exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                url = f"http://127.0.0.1:{self.health_port}/healthz"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"operator not healthy after {timeout}s:\n{self.log_tail()}")

    def stop(self, *, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        """Stop (if running) and start again."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the operator's log."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
