"""An endpoint whose pod is served by the real vLLM engine, on the local control plane.

The operator runs against the local cluster (e2e/cluster) as in tests/cluster; the pod
supervisor serves the endpoint's first pod with the real engine (CPU build of vLLM, tiny
model; e2e/engine/real_pods.py) and every later pod with the simulator. The endpoint sets
``E2E_SIM_READINESS=supervisor`` in spec.runtime.env (a test knob, like E2E_SIM_FAIL): kwok
keeps its pods Running but not Ready from their creation until the supervisor, playing the
kubelet's readiness probe (the pod's own: ``/magistral/ready`` every 5 s), labels them
``magistral.dev/sim-ready=true``. One scenario, since the engine takes about a minute to start:

(a) the endpoint is not Ready while the engine loads and turns Ready once the engine's
    readiness probe passes;
(b) a chat completion to the pod answers through our middleware: the reasoning split, the
    custom system prompt inserted, the API key from the namespace's Secret enforced;
(c) the operator reads the engine's ``/metrics`` (and the routers' ``/demand``): with
    ``maxNumSeqs: 2`` and four streams, two wait, and status.autoscaler records a
    recommendation of 2 replicas held back by a one-hour up window (no second replica starts);
(d) a rollout (a new default temperature) replaces the pod with a simulated one while a long
    stream runs on the engine: the old pod is deleted, the supervisor plays preStop, SIGTERM
    and the grace period, the stream ends cleanly (the middleware's cutoff error event and
    ``[DONE]``), the engine exits well before the grace period ends, and the revision is
    Healthy.

The engine's shutdown timeout is shortened to 10 s (the pod's config says 60 s; the pod's grace
period stays 80 s) to keep the test short. This module starts its own cluster and operator
(module scope); it stops the engine the other tests of the session share before its own starts
(``only_engine``), so that one engine runs at a time.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from e2e.cluster.cluster import LocalCluster
from e2e.cluster.nodepools import create_pools
from e2e.cluster.stages import SIM_READINESS_ENV, SIM_READINESS_SUPERVISOR, SIM_READY_LABEL
from e2e.engine.real_pods import EngineInstall
from e2e.engine.supervisor import SimulatorInfo, Supervisor, serving
from e2e.install import OPERATOR_NAMESPACE, SERVICE_ACCOUNT, install_crds, install_operator_rbac
from e2e.operator_process import OperatorProcess
from e2e.real_engine.env import EngineEnv
from e2e.real_engine.serve import START_TIMEOUT
from e2e.stalls import Heartbeat
from tests.cluster.conftest import apply_manifest, condition, get_endpoint, wait_for
from tests.vllm.conftest import record

pytestmark = pytest.mark.cluster

NAME = "real"
KEY = "sk-real-engine-in-the-cluster"
SERVED = "magistral-small"
PROMPT = "You are a tiny test model. Answer briefly."
SHUTDOWN_TIMEOUT = 10
"""The real engine's shutdown timeout (the pod's config: 60 s)."""
CONTEXT = 32768
"""The engine's max_model_len here (the real-engine tests' usual 4096 raised): room for a long
stream that must still run when the rollout's SIGTERM comes."""
LONG_STREAM_TOKENS = 30000
"""The long stream of (d). From the spec change to SIGTERM the rollout takes 20-30 s (the new
pod Ready, healthySeconds, the old pod's 10 s preStop), and once 78 s in CI; the engine on
CPU generates 100-250 tokens/s for one sequence, so 3,000 tokens once ended 7 s before SIGTERM
(stop 22's CI). At that speed 30,000 take two minutes or more, longer than such a rollout
plus the machine's stalls (docs/real-engine.md); the drain cuts the stream anyway."""
FAST_SIMS = ["--itl-ms", "2", "--ttft-ms", "5"]


def manifest(namespace: str, *, temperature: float) -> dict[str, Any]:
    return {
        "apiVersion": "magistral.dev/v1alpha1",
        "kind": "MagistralEndpoint",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "model": {"repo": "mistralai/Magistral-Small-2506", "servedModelName": SERVED},
            "runtime": {
                "maxModelLen": CONTEXT,
                "maxNumSeqs": 2,
                "env": [{"name": SIM_READINESS_ENV, "value": SIM_READINESS_SUPERVISOR}],
            },
            "gpu": {"pools": ["reserved-h100"]},
            "scaling": {
                "minReplicas": 1,
                "maxReplicas": 2,
                "scaleUpWindowSeconds": 3600,
            },
            "inference": {
                "systemPrompt": {"mode": "custom", "text": PROMPT},
                "sampling": {"temperature": temperature},
            },
            # The plain rolling update (the pod is replaced during a stream); the canary
            # analysis has its own tests (tests/cluster/test_canary.py).
            "rollout": {
                "maxSurge": 1,
                "maxUnavailable": 0,
                "healthySeconds": 2,
                "canary": {"enabled": False},
            },
            "auth": {"apiKeySecretRef": {"name": "api-key", "key": "api-key"}},
        },
    }


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A cluster of this module's own: its operator is the only one that reconciles."""
    with LocalCluster(die_with_parent=True) as local:
        create_pools(local.api())
        install_crds(local.kubeconfig)
        install_operator_rbac(local.kubeconfig)
        yield local


@pytest.fixture(scope="module")
def api(cluster: LocalCluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="module")
def operator(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(
        kubeconfig=cluster.kubeconfig_for_service_account(OPERATOR_NAMESPACE, SERVICE_ACCOUNT),
        log_file=tmp_path_factory.mktemp("operator") / "operator.log",
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"real-engine-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_secret(
        name, {"metadata": {"name": "api-key"}, "stringData": {"api-key": KEY}}
    )
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module", autouse=True)
def only_engine(request: pytest.FixtureRequest) -> None:
    """Stop the engine the session's other tests share (conftest's ``engines``), if one runs:
    the machine holds one engine at a time. The next test that needs it starts it again."""
    try:
        engines = request.getfixturevalue("engines")
    except pytest.FixtureLookupError:
        return
    engines.close()


@pytest.fixture(scope="module")
def supervisor(
    cluster: LocalCluster,
    namespace: str,
    engine_env: EngineEnv,
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Supervisor]:
    with Supervisor(
        kubeconfig=cluster.kubeconfig,
        namespace=namespace,
        sim_args=FAST_SIMS,
        log_dir=tmp_path_factory.mktemp("engines"),
        real_engine=lambda pod: True,  # the first pod; later ones while it runs get simulators
        real_engine_overrides={
            "shutdown_timeout_seconds": SHUTDOWN_TIMEOUT,
            "max_model_len": CONTEXT,
        },
        engine_install=EngineInstall(env=engine_env, model=tiny_model),
        stop_grace_seconds=15,
    ) as sup:
        yield sup


# ------------------------------------------------------------------------------- helpers
def post(
    sim: SimulatorInfo, path: str, body: dict[str, Any], *, key: str | None = KEY
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        f"{sim.url}{path}", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def gauges(sim: SimulatorInfo) -> dict[str, float]:
    """The queue gauges of the engine's /metrics (summed over label sets)."""
    # Read while the engine is busy: a stall of the machine must not end the test.
    with urllib.request.urlopen(f"{sim.url}/metrics", timeout=60) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("vllm:num_requests_waiting", "vllm:num_requests_running"):
            if line.startswith(name + "{") or line.startswith(name + " "):
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


@dataclass
class Stream:
    """One streamed chat completion in a thread: its SSE ``data:`` payloads with times."""

    sim: SimulatorInfo
    max_tokens: int
    events: list[tuple[float, str]] = field(default_factory=list)
    error: BaseException | None = None
    closed_at: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Stream:
        self.thread.start()
        return self

    def _run(self) -> None:
        body = json.dumps(
            {
                "model": SERVED,
                "messages": [{"role": "user", "content": "Say the magic word, many times."}],
                "stream": True,
                "max_tokens": self.max_tokens,
                "ignore_eos": True,
            }
        )
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        conn = http.client.HTTPConnection(self.sim.ip, self.sim.port, timeout=180)
        try:
            conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
            resp = conn.getresponse()
            assert resp.status == 200, resp.status
            while not self.stop.is_set():
                line = resp.readline()
                if not line:
                    break
                text = line.decode().rstrip("\r\n")
                if text.startswith("data: "):
                    self.events.append((time.monotonic(), text[len("data: ") :]))
        except BaseException as err:  # reported by the test
            self.error = err
        finally:
            self.closed_at = time.monotonic()
            conn.close()  # a disconnect aborts the request in the engine

    def payloads(self) -> list[Any]:
        return [p if p == "[DONE]" else json.loads(p) for _, p in self.events]


def endpoint_state(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    obj = get_endpoint(api, namespace, NAME)
    status = obj.get("status") or {}
    ready = condition(obj, "Ready") or {}
    return {
        "ready": ready.get("status") == "True",
        "replicas": status.get("replicas"),
        "readyReplicas": status.get("readyReplicas"),
        "rollout": status.get("rollout") or {},
        "autoscaler": status.get("autoscaler") or {},
        "obj": obj,
    }


def pod_ready(api: client.ApiClient, namespace: str, name: str) -> tuple[bool, Any] | None:
    """(Ready, label sim-ready) of a pod, None when it is gone."""
    try:
        pod = client.CoreV1Api(api).read_namespaced_pod(name, namespace)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise
    ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    return ready, (pod.metadata.labels or {}).get(SIM_READY_LABEL)


def the_real_engine(sims: list[SimulatorInfo]) -> SimulatorInfo | None:
    return next((s for s in sims if s.real_engine), None)


# --------------------------------------------------------------------------------- test
def test_an_endpoint_served_by_the_real_engine(
    api: client.ApiClient,
    cluster: LocalCluster,
    operator: OperatorProcess,
    namespace: str,
    supervisor: Supervisor,
    *,
    heartbeat: Heartbeat,
) -> None:
    started = time.monotonic()
    apply_manifest(cluster.kubeconfig, manifest(namespace, temperature=0.7))

    # (a) Not Ready while the engine loads; Ready once its readiness probe passes.
    (engine,) = supervisor.wait_for(lambda s: the_real_engine(s) is not None, timeout=60)
    assert len(supervisor.simulators()) == 1  # one pod, the engine's
    seen: list[tuple[float, bool, Any, tuple[bool, Any] | None]] = []

    def loaded() -> SimulatorInfo | None:
        # The cluster first, the engine after: an engine not ready now was not ready then.
        state = endpoint_state(api, namespace)
        pod = pod_ready(api, namespace, engine.pod)
        sim = the_real_engine(supervisor.simulators())
        if sim is not None and sim.ready_seconds is None:
            seen.append((time.monotonic() - started, state["ready"], state["readyReplicas"], pod))
        return sim if sim is not None and sim.ready_seconds is not None else None

    engine = wait_for(
        "the real engine to pass its readiness probe", loaded, timeout=START_TIMEOUT, interval=0.5
    )
    assert engine.health_seconds is not None
    assert engine.ready_seconds is not None
    ready = wait_for(
        "the endpoint to be Ready",
        lambda: (s := endpoint_state(api, namespace))["ready"] and s["readyReplicas"] == 1,
        timeout=60,
    )
    assert ready
    endpoint_ready_after = time.monotonic() - started
    assert len(seen) > 10, seen  # polled all through the loading
    assert not [s for s in seen if s[1] or s[2]], seen  # never Ready while loading
    pods_seen = [s[3] for s in seen if s[3] is not None]
    assert pods_seen
    assert all(p == (False, None) for p in pods_seen), pods_seen
    assert not engine.ready_before_engine  # kwok never showed the pod Ready before the engine
    assert pod_ready(api, namespace, engine.pod) == (True, "true")
    assert engine.runtime_middleware
    assert engine.state == "serving"

    # (b) A chat completion through our middleware, with the Secret's key.
    status, _ = post(engine, "/v1/chat/completions", {"model": SERVED, "messages": []}, key=None)
    assert status == 401
    question = [{"role": "user", "content": "What is the magic word?"}]
    status, answer = post(engine, "/v1/chat/completions", {"model": SERVED, "messages": question})
    assert status == 200, answer
    message = answer["choices"][0]["message"]
    assert message["content"].strip() == "The magic word is **tiny**.", message
    assert "<think>" not in message["content"]
    assert "say the magic word exactly once" in message["reasoning"], message
    assert message["reasoning_content"] == message["reasoning"]
    assert answer["choices"][0]["finish_reason"] == "stop"
    # The custom prompt was inserted: the same count as with the prompt sent explicitly.
    explicit = [{"role": "system", "content": PROMPT}, *question]
    status, same = post(
        engine, "/v1/chat/completions", {"model": SERVED, "messages": explicit, "max_tokens": 1}
    )
    assert status == 200, same
    assert answer["usage"]["prompt_tokens"] == same["usage"]["prompt_tokens"]

    # (c) The operator reads the engine's queue: 2 running (maxNumSeqs) and 2 waiting.
    # Long enough to hold the queue until the operator has read it (a scrape and a pass, 3 s
    # each, may lag 6 s; at 250 tokens/s 600 tokens held it for only 2.4 s): they are stopped
    # once status.autoscaler shows it, and the engine aborts them.
    load = [Stream(engine, max_tokens=LONG_STREAM_TOKENS).start() for _ in range(4)]
    try:
        queued = wait_for(
            "two requests waiting on the engine",
            lambda: (g := gauges(engine)).get("vllm:num_requests_waiting", 0) >= 2 and g,
            timeout=120,
        )
        assert queued["vllm:num_requests_running"] == 2, queued
        # A read of all the routers and the engine ("ok"): a read that a stall of the machine
        # made miss one (1 s timeout, kube/metrics.py) is "partial", and the next one counts.
        autoscaler = wait_for(
            "status.autoscaler to hold back a scale-up on the engine's queue, read in full",
            lambda: (
                (a := endpoint_state(api, namespace)["autoscaler"]).get("upSince")
                and a.get("read") == "ok"
                and a
            ),
            timeout=120,
        )
    finally:
        for stream in load:
            stream.stop.set()
        for stream in load:
            stream.thread.join(timeout=30)
    assert autoscaler["read"] == "ok", autoscaler  # the routers and the engine answered
    # 4 requests in the engine (2 running, 2 waiting) against 2 sequences at 80 %: 2.5
    # replicas, maxReplicas 2; the one-hour up window holds it.
    assert autoscaler["window"][-1]["replicas"] == 2, autoscaler
    assert autoscaler["desiredReplicas"] == 1, autoscaler
    wait_for(
        "the engine to be idle again",
        lambda: not any(gauges(engine).values()),
        timeout=60,
    )

    # (d) A rollout replaces the engine's pod while a long stream runs on it.
    old_revision = endpoint_state(api, namespace)["rollout"]["currentRevision"]
    long = Stream(engine, max_tokens=LONG_STREAM_TOKENS).start()
    wait_for("the long stream's first tokens", lambda: len(long.events) >= 5, timeout=60)
    applied = time.monotonic()
    apply_manifest(cluster.kubeconfig, manifest(namespace, temperature=0.5))
    (exit_,) = wait_for(
        "the real engine to exit",
        lambda: [e for e in supervisor.exits() if e.real_engine],
        timeout=180,
    )
    long.thread.join(timeout=30)
    rollout = wait_for(
        "the new revision to be Healthy",
        lambda: (
            (r := endpoint_state(api, namespace)["rollout"]).get("phase") == "Healthy"
            and r.get("currentRevision") != old_revision
            and r
        ),
        timeout=120,
    )
    state = wait_for(
        "the endpoint Ready on the new revision",
        lambda: (s := endpoint_state(api, namespace))["ready"] and s["readyReplicas"] == 1 and s,
        timeout=60,
    )

    assert long.error is None, long.error
    payloads = long.payloads()
    assert payloads[-1] == "[DONE]", payloads[-3:]
    last = payloads[-2]
    if "error" in last:  # the middleware's cutoff, shortly before the shutdown timeout
        assert last["error"]["type"] == "service_unavailable", last
        assert last["error"]["code"] == 503, last
        cut = True
    else:
        assert last["choices"][0]["finish_reason"] in ("length", "stop"), last
        cut = False
    assert long.closed_at is not None
    assert exit_.sigterm_at is not None
    # It was in flight when the drain began.
    assert long.closed_at > exit_.sigterm_at, (
        f"the long stream ended {exit_.sigterm_at - long.closed_at:.1f} s before SIGTERM, "
        f"{len(payloads)} events, {long.closed_at - applied:.1f} s after the spec change"
    )
    assert exit_.pod == engine.pod
    assert not exit_.sigkilled, exit_  # it exited by itself, before the grace period ended
    assert exit_.returncode is not None
    assert exit_.grace_s == 80  # preStop 10 s + the operator's 60 s timeout + 10 s margin
    assert exit_.prestop_s == 10
    assert exit_.drain_seconds is not None
    assert exit_.grace_left_seconds is not None
    # Times the supervisor took in this process: bounded net of its stalls (e2e/stalls.py).
    drain_stalled = heartbeat.stalled(exit_.sigterm_at, exit_.exited_at)
    assert exit_.drain_seconds - drain_stalled < SHUTDOWN_TIMEOUT + 15, (exit_, drain_stalled)
    assert exit_.deleted_at is not None
    grace_stalled = heartbeat.stalled(exit_.deleted_at, exit_.exited_at)
    assert exit_.grace_left_seconds + grace_stalled > 30, (exit_, grace_stalled)

    assert rollout["lastHealthyRevision"] == rollout["currentRevision"]
    progressing = condition(state["obj"], "Progressing")
    assert progressing is not None
    assert progressing["status"] == "False", progressing
    (new_pod,) = serving(supervisor.simulators())
    assert not new_pod.real_engine
    assert new_pod.runtime_middleware
    assert new_pod.pod != engine.pod

    timings = {
        "engine /health 200": f"{engine.health_seconds:.1f} s after its start",
        "engine ready (readiness probe passed)": f"{engine.ready_seconds:.1f} s after its start",
        "endpoint Ready": f"{endpoint_ready_after:.1f} s after the endpoint was applied",
        "stream end": (
            f"{long.closed_at - exit_.sigterm_at:.1f} s after SIGTERM "
            f"({'cut by the middleware' if cut else 'finished'}; {len(payloads)} events)"
        ),
        "engine exit": (
            f"{exit_.drain_seconds:.1f} s after SIGTERM, "
            f"{exit_.exited_at - (exit_.deleted_at or applied):.1f} s after the pod's deletion, "
            f"{exit_.grace_left_seconds:.1f} s before its {exit_.grace_s:.0f} s grace period ended"
        ),
        "rollout": f"Healthy {time.monotonic() - applied:.1f} s after the spec change",
    }
    for what, value in timings.items():
        record(f"in the cluster: {what}", value)
        print(f"{what}: {value}")
