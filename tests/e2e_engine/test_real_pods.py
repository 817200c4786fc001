"""The pure parts of serving a pod with the real engine: its config, files and readiness probe.

The engine itself runs in tests/vllm/test_cluster_real_engine.py; these need neither the
engine venv nor a cluster.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from e2e.engine.pods import ReadinessProbe, decide, readiness_probe
from e2e.engine.real_pods import EngineInstall, ReadinessProber, prepare
from e2e.engine.runtime_files import RuntimeSetupError
from e2e.engine.supervisor import main as supervisor_main
from e2e.real_engine.env import EngineEnv
from e2e.real_engine.pod_config import pod_runtime_config
from magistral_runtime.config import RuntimeConfig, parse_runtime_config
from magistral_runtime.launcher import build_serve_argv

from .conftest import CUSTOM_PROMPT, by_kind, render


def rendered(spec_changes: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the pod template's container, the runtime config text) the operator renders."""
    objects = render(spec_changes)
    container = by_kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    (text,) = (v for k, v in by_kind(objects, "ConfigMap")["data"].items() if k.endswith(".json"))
    return container, text


def test_the_readiness_probe_of_an_operator_pod() -> None:
    container, _ = rendered({})
    assert readiness_probe(container) == ReadinessProbe(
        path="/magistral/ready", period_s=5, timeout_s=8, failure_threshold=2, success_threshold=1
    )
    # Without one, the kubelet's defaults, on vLLM's /health.
    assert readiness_probe({"name": "vllm"}) == ReadinessProbe(
        path="/health", period_s=10, timeout_s=1, failure_threshold=3, success_threshold=1
    )


def test_decide_carries_the_probe_and_keeps_it_out_of_the_fingerprint() -> None:
    container, _ = rendered({})
    pod = {
        "metadata": {"uid": "u", "namespace": "ns", "name": "p"},
        "spec": {"containers": [container]},
        "status": {"phase": "Running", "podIP": "127.64.0.9"},
    }
    sim = decide(pod).sim
    assert sim is not None
    assert sim.readiness.path == "/magistral/ready"
    container["readinessProbe"]["periodSeconds"] = 1
    changed = decide(pod).sim
    assert changed is not None
    assert changed.readiness.period_s == 1
    assert changed.fingerprint() == sim.fingerprint()


def test_the_pods_config_adapted_to_the_tiny_model(tmp_path: Path) -> None:
    _, text = rendered(
        {
            "runtime": {"maxModelLen": 40960, "maxNumSeqs": 3, "extraArgs": ["--seed", "1"]},
            "inference": {"sampling": {"temperature": 0.3}, "reasoningHistory": "keep"},
        }
    )
    pod = parse_runtime_config(text, source="test")
    config, notes = pod_runtime_config(
        pod,
        model=tmp_path / "tiny",
        host="127.64.0.9",
        port=8000,
        overrides={"shutdown_timeout_seconds": 7},
    )
    assert config.model == str(tmp_path / "tiny")
    assert (config.host, config.port) == ("127.64.0.9", 8000)
    assert config.tensor_parallel_size == 1
    assert config.max_model_len == 4096  # the tiny engine's, not 40960
    assert config.revision is None
    assert config.download_dir is None
    assert config.quantization is None
    assert config.kv_cache_dtype == "auto"
    assert config.extra_args == ("--enforce-eager",)  # the pod's GPU-side extra args dropped
    assert config.shutdown_timeout_seconds == 7
    # The pod's own settings stay.
    for name in (
        "served_model_name",
        "sampling",
        "max_num_seqs",
        "reasoning_format",
        "reasoning_history",
        "tool_calling",
        "api_key_required",
        "system_prompt",
        "limits",
        "health",
        "gpu_memory_utilization",
    ):
        assert getattr(config, name) == getattr(pod, name), name
    assert config.sampling.temperature == 0.3
    assert any(n.startswith("shutdown_timeout_seconds 60 -> 7") for n in notes), notes
    assert any(n.startswith("max_model_len 40960 -> 4096") for n in notes), notes
    argv = build_serve_argv(config)
    assert argv[argv.index("--host") + 1] == "127.64.0.9"
    assert "--revision" not in argv


def test_a_custom_prompt_needs_its_local_copy_and_overrides_are_validated(
    tmp_path: Path,
) -> None:
    _, text = rendered({"inference": {"systemPrompt": {"mode": "custom", "text": "Be terse."}}})
    pod = parse_runtime_config(text, source="test")
    common: dict[str, Any] = {"model": tmp_path, "host": "127.64.0.9", "port": 8000}
    with pytest.raises(ValueError, match="local copy"):
        pod_runtime_config(pod, **common)
    config, _ = pod_runtime_config(pod, custom_prompt_path=tmp_path / "p.txt", **common)
    assert config.system_prompt.path == str(tmp_path / "p.txt")
    with pytest.raises(ValueError, match="shutdown_timeout_seconds"):
        pod_runtime_config(
            pod,
            custom_prompt_path=tmp_path / "p.txt",
            overrides={"shutdown_timeout_seconds": -1},
            **common,
        )


@pytest.fixture
def install(tmp_path: Path) -> EngineInstall:
    model = tmp_path / "tiny-model"
    model.mkdir()
    (model / "SYSTEM_PROMPT.txt").write_text("The tiny model's own prompt.\n")
    return EngineInstall(env=EngineEnv(root=tmp_path / "venv"), model=model)


@pytest.mark.parametrize("mode", ["custom", "model", "none"])
def test_prepare_writes_what_the_runtime_reads(
    mode: str, install: EngineInstall, tmp_path: Path
) -> None:
    prompt: dict[str, Any] = {"mode": mode}
    if mode == "custom":
        prompt["text"] = CUSTOM_PROMPT
    _, text = rendered({"inference": {"systemPrompt": prompt}})
    files = prepare(
        tmp_path / "pod",
        install=install,
        config_text=text,
        source="ConfigMap ns/ep-runtime",
        host="127.64.0.9",
        port=8000,
        custom_prompt=CUSTOM_PROMPT if mode == "custom" else None,
        overrides={"shutdown_timeout_seconds": 9},
    )
    assert files.argv == [
        str(install.env.root / "bin" / "magistral-runtime"),
        "serve",
        "--config",
        str(files.config_path),
    ]
    written = RuntimeConfig.model_validate(json.loads(files.config_path.read_text()))
    assert written.model == str(install.model)
    assert written.shutdown_timeout_seconds == files.shutdown_timeout_seconds == 9
    assert written.system_prompt.mode == mode
    if mode == "custom":
        assert written.system_prompt.path is not None
        assert Path(written.system_prompt.path).read_text() == CUSTOM_PROMPT
        assert files.system_prompt.startswith("custom")
    elif mode == "model":
        assert files.system_prompt.startswith("model (the tiny model's SYSTEM_PROMPT.txt")
    else:
        assert files.system_prompt == "none"


def test_prepare_refuses_a_missing_prompt(install: EngineInstall, tmp_path: Path) -> None:
    _, text = rendered({"inference": {"systemPrompt": {"mode": "custom", "text": "x"}}})
    with pytest.raises(RuntimeSetupError, match="custom system prompt"):
        prepare(
            tmp_path / "pod",
            install=install,
            config_text=text,
            source="src",
            host="127.0.0.1",
            port=8000,
            custom_prompt=None,
            overrides={},
        )
    (install.model / "SYSTEM_PROMPT.txt").unlink()
    _, text = rendered({"inference": {"systemPrompt": {"mode": "model"}}})
    with pytest.raises(RuntimeSetupError, match="not readable"):
        prepare(
            tmp_path / "pod",
            install=install,
            config_text=text,
            source="src",
            host="127.0.0.1",
            port=8000,
            custom_prompt=None,
            overrides={},
        )


class Scripted(BaseHTTPRequestHandler):
    statuses: list[int] = []

    def do_GET(self) -> None:
        scripted = self.path != "/health" and self.statuses
        status = self.statuses.pop(0) if scripted else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_the_prober_plays_the_kubelets_thresholds(server: ThreadingHTTPServer) -> None:
    # Unready, then 2 successes to turn ready, then 3 failures to turn unready again.
    Scripted.statuses = [503, 503, 200, 200, 503, 503, 503, 200]
    probe = ReadinessProbe(
        path="/ready", period_s=0.3, timeout_s=1, failure_threshold=3, success_threshold=2
    )  # each state lasts 0.6-0.9 s: sampled every 20 ms, a stalled thread still sees it
    port = server.server_address[1]
    prober = ReadinessProber(base_url=f"http://127.0.0.1:{port}", probe=probe, name="t").start()
    try:
        states: list[bool] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not states or len(Scripted.statuses) > 0):
            states.append(prober.ready)
            time.sleep(0.02)
        settle = time.monotonic() + 5  # the last 200s turn it ready again
        while not prober.ready and time.monotonic() < settle:
            time.sleep(0.02)
        states.append(prober.ready)
    finally:
        prober.stop()
    changes = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
    assert changes == [False, True, False, True], changes
    assert prober.health_at is not None
    assert prober.ready_at is not None


def test_the_cli_takes_a_real_engine_glob(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class StopError(Exception):
        pass

    def fake(**kwargs: Any) -> Any:
        seen.update(kwargs)
        raise StopError

    monkeypatch.setattr("e2e.engine.supervisor.Supervisor", fake)
    argv = ["--kubeconfig", str(tmp_path / "k"), "--real-engine", "ns/ep-*"]
    with pytest.raises(StopError):
        supervisor_main([*argv, "--real-engine-shutdown-timeout", "12"])
    select = seen["real_engine"]
    assert select({"metadata": {"namespace": "ns", "name": "ep-abc"}})
    assert not select({"metadata": {"namespace": "other", "name": "ep-abc"}})
    assert seen["real_engine_overrides"] == {"shutdown_timeout_seconds": 12}
    with pytest.raises(StopError):
        supervisor_main(["--kubeconfig", str(tmp_path / "k")])
    assert seen["real_engine"] is None
    with pytest.raises(StopError):
        supervisor_main(["--kubeconfig", str(tmp_path / "k"), "--real-engine"])
    assert seen["real_engine"]({"metadata": {"namespace": "a", "name": "b"}})
