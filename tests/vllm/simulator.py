"""The engine simulator (e2e/engine) started like a real engine, for the calibration tests.

It gets the same `vllm serve` argv as the real engine (through the simulator's own
translation, as the pod supervisor does), the same runtime config and API key, and our
middleware: so the two answer the same requests through the same stack.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

from e2e.engine.config import simulator_args_from_vllm
from e2e.real_engine.env import REPO_ROOT
from e2e.real_engine.serve import RealEngine
from magistral_runtime.config import API_KEY_ENV, CONFIG_ENV
from magistral_runtime.launcher import MIDDLEWARE

FAST = ["--ttft-ms", "5", "--itl-ms", "2", "--prefill-ms-per-token", "0"]


class SimulatorLike:
    """``python -m e2e.engine.simulator`` with ``engine``'s argv, config and key."""

    def __init__(self, engine: RealEngine, *, log_path: Path) -> None:
        args = simulator_args_from_vllm(engine.expected_argv())
        self.argv = [
            sys.executable,
            "-m",
            "e2e.engine.simulator",
            *args,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--middleware",
            MIDDLEWARE,
            *FAST,
        ]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "HF_"))}
        self.env.update(
            {
                CONFIG_ENV: str(engine.config_path),
                "PYTHONUNBUFFERED": "1",
                **({API_KEY_ENV: engine.api_key} if engine.api_key else {}),
            }
        )
        self.api_key = engine.api_key
        self.log_path = log_path
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> SimulatorLike:
        self._proc = subprocess.Popen(
            self.argv,
            cwd=REPO_ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        found = threading.Event()

        def read() -> None:
            assert self._proc is not None
            assert self._proc.stdout is not None
            with self.log_path.open("w") as log:
                for line in self._proc.stdout:
                    log.write(line)
                    log.flush()
                    lines.append(line)
                    if not found.is_set() and "running on http://" in line:
                        self.url = line.split("running on ", 1)[1].split()[0]
                        found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(30):
            self.__exit__(None, None, None)
            raise AssertionError(f"the simulator did not start:\n{''.join(lines)}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
