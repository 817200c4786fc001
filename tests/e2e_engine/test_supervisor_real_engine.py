"""The supervisor's real-engine mode on the local control plane, with a stand-in engine.

The real engine takes a minute to start (tests/vllm/test_cluster_real_engine.py runs it);
here a small stand-in takes its place in a fake engine venv (``bin/magistral-runtime``): it
reads the runtime config the supervisor wrote, serves ``/health`` and ``/magistral/ready`` on the
pod's address (ready once a file exists), starts a child in its process group as vLLM does, and
exits on SIGTERM leaving the child behind. So the supervisor's part can be checked in seconds:
a pod gated by ``E2E_SIM_READINESS=supervisor`` is Ready exactly while the readiness probe
passes on its engine (the stand-in's or a simulator's), one real engine at a time, the group
killed when its main process ends, restarts, the exit record of a deleted pod, and the
best-effort ``sim-unready`` label on an ungated pod.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster.cluster import LocalCluster
from e2e.cluster.kubeapi import KubeApi
from e2e.cluster.nodepools import create_pools
from e2e.cluster.processes import group_alive, pid_alive
from e2e.cluster.stages import (
    SIM_READINESS_ENV,
    SIM_READINESS_SUPERVISOR,
    SIM_READY_LABEL,
    SIM_UNREADY_LABEL,
)
from e2e.engine.real_pods import EngineInstall
from e2e.engine.supervisor import SimulatorInfo, Supervisor, serving
from e2e.real_engine.env import EngineEnv
from tests.e2e_engine.conftest import by_kind, fetch, render

pytestmark = pytest.mark.cluster

FAST = ["--itl-ms", "2", "--ttft-ms", "5", "--output-tokens-max", "64"]

STAND_IN = """\
import http.server, json, os, signal, subprocess, sys, threading, time
config_path = sys.argv[sys.argv.index("--config") + 1]
config = json.load(open(config_path))
here = os.path.dirname(config_path)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
open(os.path.join(here, "pids"), "w").write(f"{os.getpid()} {child.pid}")
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/health" or os.path.exists(os.path.join(here, "ready"))
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer((config["host"], config["port"]), Handler)
def term(*_):
    threading.Thread(target=server.shutdown).start()
signal.signal(signal.SIGTERM, term)
print("stand-in engine on", config["host"], config["port"], flush=True)
server.serve_forever()
time.sleep(0.5)  # "drains"; the child is left behind, as vLLM's would be without the kubelet
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    reuse = os.environ.get("MAGISTRAL_E2E_STATE")
    if reuse:
        attached = LocalCluster.attach(Path(reuse))
        create_pools(attached.api())
        yield attached
        return
    with LocalCluster(die_with_parent=True) as local:
        create_pools(local.api())
        yield local


@pytest.fixture
def ns(cluster: LocalCluster) -> Iterator[str]:
    name = f"real-sup-{uuid.uuid4().hex[:6]}"
    api = cluster.api()
    api.create("/api/v1/namespaces", {"metadata": {"name": name}})
    api.create(
        f"/api/v1/namespaces/{name}/secrets",
        {"metadata": {"name": "api-key"}, "stringData": {"key": "sk-stand-in"}},
    )
    yield name
    api.delete(f"/api/v1/namespaces/{name}")


@pytest.fixture
def install(tmp_path: Path) -> EngineInstall:
    root = tmp_path / "venv"
    (root / "bin").mkdir(parents=True)
    cli = root / "bin" / "magistral-runtime"
    cli.write_text(f"#!{sys.executable}\n{STAND_IN}")
    cli.chmod(0o755)
    model = tmp_path / "model"
    model.mkdir()
    (model / "SYSTEM_PROMPT.txt").write_text("The stand-in model's prompt.\n")
    return EngineInstall(env=EngineEnv(root=root), model=model)


GATED = [{"name": SIM_READINESS_ENV, "value": SIM_READINESS_SUPERVISOR}]


def create(
    api: KubeApi, ns: str, name: str, *, gated: bool = True, with_config_map: bool = True
) -> None:
    runtime = {"maxModelLen": 40960, "env": GATED if gated else []}
    objects = render({"runtime": runtime}, name=name, namespace=ns)
    deployment = by_kind(objects, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["periodSeconds"] = 1  # the supervisor probes on the pod's terms
    if with_config_map:
        api.create(f"/api/v1/namespaces/{ns}/configmaps", by_kind(objects, "ConfigMap"))
    api.create(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment)


def pod_state(api: KubeApi, ns: str, name: str) -> tuple[bool, str | None, str | None]:
    """(Ready, label sim-ready, label sim-unready)."""
    pod = api.get(f"/api/v1/namespaces/{ns}/pods/{name}")
    ready = any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
    )
    labels = pod["metadata"].get("labels", {})
    return ready, labels.get(SIM_READY_LABEL), labels.get(SIM_UNREADY_LABEL)


def pods_ever_ready(api: KubeApi, ns: str, seconds: float) -> list[tuple[bool, Any, Any]]:
    """Every pod's state, polled for ``seconds``: the Ready ones."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for pod in api.get(f"/api/v1/namespaces/{ns}/pods")["items"]:
            seen.append(pod_state(api, ns, pod["metadata"]["name"]))
        time.sleep(0.05)
    return [s for s in seen if s[0]]


def engine_dir(sup: Supervisor, sim: SimulatorInfo) -> Path:
    return sup.log_dir / f"{sim.namespace}.{sim.pod}.engine"


def pids(sup: Supervisor, sim: SimulatorInfo) -> tuple[int, int]:
    main, child = (engine_dir(sup, sim) / "pids").read_text().split()
    return int(main), int(child)


def wait(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_one_pod_on_the_engine_with_the_kubelets_readiness(
    cluster: LocalCluster, ns: str, install: EngineInstall, tmp_path: Path
) -> None:
    api = cluster.api()
    with Supervisor(
        kubeconfig=cluster.kubeconfig,
        namespace=ns,
        sim_args=FAST,
        log_dir=tmp_path / "logs",
        honor_prestop=False,
        real_engine=lambda pod: pod["metadata"]["name"].startswith("rt-"),
        real_engine_overrides={"shutdown_timeout_seconds": 3},
        engine_install=install,
    ) as sup:
        create(api, ns, "rt-a")
        assert not pods_ever_ready(api, ns, 3.0)  # from its creation on
        (sim,) = sup.wait_for(lambda s: len(serving(s)) == 1, timeout=60)
        assert sim.real_engine
        assert sim.runtime_middleware
        assert sim.health_seconds is not None
        # Serving but not ready: kwok keeps the gated pod not Ready.
        assert not pods_ever_ready(api, ns, 2.5)
        assert pod_state(api, ns, sim.pod) == (False, None, None)
        assert fetch(f"{sim.url}/magistral/ready")[0] == 503
        config = json.loads((engine_dir(sup, sim) / "runtime.json").read_text())
        assert config["model"] == str(install.model)
        assert (config["host"], config["port"]) == (sim.ip, sim.port)
        assert config["shutdown_timeout_seconds"] == 3
        assert config["extra_args"] == ["--enforce-eager"]

        # The engine turns ready: the label goes, the pod turns Ready.
        (engine_dir(sup, sim) / "ready").touch()
        wait("the pod to turn Ready", lambda: pod_state(api, ns, sim.pod) == (True, "true", None))
        (sim,) = sup.wait_for(lambda s: s[0].ready_seconds is not None, timeout=10)
        assert not sim.ready_before_engine

        # A second selected pod while the engine runs gets a simulator: one engine at a time.
        # Gated too, it turns Ready once the probe passes on the simulator's middleware.
        create(api, ns, "rt-b")
        sims = sup.wait_for(lambda s: len(serving(s)) == 2, timeout=60)
        other = next(s for s in sims if s.pod != sim.pod)
        assert not other.real_engine
        assert other.runtime_middleware
        wait("the simulator's pod Ready", lambda: pod_state(api, ns, other.pod)[0], timeout=30)
        assert pod_state(api, ns, other.pod) == (True, "true", None)
        (other,) = [s for s in sup.simulators() if s.pod == other.pod]
        assert other.ready_seconds is not None

        # The engine's main process dies: its child goes too, and the pod is unready until the
        # restarted engine is ready (its directory, ready file included, is written anew).
        main, child = pids(sup, sim)
        os.kill(main, signal.SIGKILL)
        wait("the child of the dead engine to be killed", lambda: not pid_alive(child))
        wait(
            "the pod to turn unready",
            lambda: pod_state(api, ns, sim.pod) == (False, "true", "true"),
        )
        sims = sup.wait_for(
            lambda s: any(x.real_engine and x.restarts == 1 and x.state == "serving" for x in s),
            timeout=30,
        )
        sim = next(s for s in sims if s.real_engine)
        assert pids(sup, sim)[0] != main
        (engine_dir(sup, sim) / "ready").touch()
        wait(
            "the pod to turn Ready again",
            lambda: pod_state(api, ns, sim.pod) == (True, "true", None),
        )

        # Deleting the pod: SIGTERM, the stand-in exits by itself, the group is killed.
        main, child = pids(sup, sim)
        api.delete(f"/apis/apps/v1/namespaces/{ns}/deployments/rt-a-reserved-h100")
        (exit_,) = wait(
            "the engine's exit record", lambda: [e for e in sup.exits() if e.real_engine]
        )
        assert exit_.pod == sim.pod
        assert exit_.returncode == 0
        assert not exit_.sigkilled
        assert exit_.drain_seconds is not None
        assert exit_.drain_seconds < 15  # the stand-in drains in 0.5 s; room for a stall
        assert exit_.grace_left_seconds is not None
        assert exit_.grace_left_seconds > 60
        assert not pid_alive(main)
        assert not pid_alive(child)
        assert not group_alive(main)
        sup.wait_for(lambda s: len(s) == 1 and not s[0].real_engine, timeout=30)


def test_an_ungated_pod_is_labelled_and_waits_for_its_config(
    cluster: LocalCluster, ns: str, install: EngineInstall, tmp_path: Path
) -> None:
    api = cluster.api()
    with Supervisor(
        kubeconfig=cluster.kubeconfig,
        namespace=ns,
        sim_args=FAST,
        log_dir=tmp_path / "logs",
        honor_prestop=False,
        real_engine=lambda pod: True,
        engine_install=install,
    ) as sup:
        # Without the gate the supervisor labels the pod sim-unready when it first sees it,
        # racing kwok's pod-ready stage (which often wins for a moment: best effort).
        create(api, ns, "rt-late", gated=False, with_config_map=False)
        (sim,) = sup.wait_for(lambda s: len(s) == 1 and s[0].state == "backoff", timeout=60)
        assert sim.real_engine
        wait("the pod unready", lambda: pod_state(api, ns, sim.pod) == (False, None, "true"))
        # The ConfigMap arrives: the engine starts at the next retry.
        objects = render({}, name="rt-late", namespace=ns)
        api.create(f"/api/v1/namespaces/{ns}/configmaps", by_kind(objects, "ConfigMap"))
        # The retry's back-off doubles up to 30 s: one more wait of it, whatever came before.
        (sim,) = sup.wait_for(lambda s: len(serving(s)) == 1, timeout=60)
        (engine_dir(sup, sim) / "ready").touch()
        wait("the pod Ready", lambda: pod_state(api, ns, sim.pod) == (True, None, None))
        api.delete(f"/apis/apps/v1/namespaces/{ns}/deployments/rt-late-reserved-h100")
        sup.wait_for(lambda s: not s, timeout=30)
