"""The supervisor against the real local control plane: one simulator per kwok pod IP."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shlex
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from e2e.cluster.cluster import LocalCluster
from e2e.cluster.kubeapi import KubeApi
from e2e.cluster.nodepools import GPU_PRODUCT_LABEL, GPU_RESOURCE, H100, create_pools
from e2e.cluster.stages import SIM_UNREADY_LABEL
from e2e.engine.pods import ARGS_ANNOTATION
from e2e.engine.runtime_files import simulated_model_prompt
from e2e.engine.supervisor import SimulatorInfo, Supervisor, serving
from e2e.engine.textgen import chat_prompt_tokens
from tests.e2e_engine.conftest import CUSTOM_PROMPT, by_kind, fetch, metrics, render, value

pytestmark = pytest.mark.cluster

MANAGED = {"app.kubernetes.io/managed-by": "magistral-operator"}
FAST = ["--itl-ms", "2", "--ttft-ms", "5", "--output-tokens-max", "64"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A new cluster, or the one ``MAGISTRAL_E2E_STATE`` names (as tests/cluster does)."""
    reuse = os.environ.get("MAGISTRAL_E2E_STATE")
    if reuse:
        attached = LocalCluster.attach(Path(reuse))
        create_pools(attached.api())  # idempotent
        yield attached
        return
    with LocalCluster(die_with_parent=True) as local:
        create_pools(local.api())
        yield local


@pytest.fixture
def ns(cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace per test (the cluster may be shared), deleted afterwards."""
    name = f"engine-sim-{uuid.uuid4().hex[:6]}"
    api = cluster.api()
    api.create("/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    api.delete(f"/api/v1/namespaces/{name}")


def deployment(
    name: str,
    *,
    ns: str,
    replicas: int,
    served: str,
    max_num_seqs: int,
    key_env: dict[str, Any],
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    vllm = shlex.join(
        [
            *("vllm", "serve", "/models/Magistral-Small-2506", "--served-model-name", served),
            *("--host", "0.0.0.0", "--port", "8000", "--tokenizer-mode", "mistral"),
            *("--max-model-len", "40960", "--max-num-seqs", str(max_num_seqs)),
        ]
    )
    pod_labels = {"app": name, **MANAGED, **(labels or {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": MANAGED},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {ARGS_ANNOTATION: vllm}},
                "spec": {
                    # One bf16 replica per GPU fits an H100, not an L40S: the simulator
                    # would fail to start there, as vLLM does.
                    "nodeSelector": {GPU_PRODUCT_LABEL: H100.product},
                    "tolerations": [
                        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "registry.invalid/magistral/runtime:test",
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "env": [{"name": "VLLM_API_KEY", **key_env}],
                            "resources": {
                                "limits": {GPU_RESOURCE: "1"},
                                "requests": {GPU_RESOURCE: "1"},
                            },
                        }
                    ],
                },
            },
        },
    }


def pods_by_ip(api: KubeApi, ns: str) -> dict[str, dict[str, Any]]:
    items = api.get(f"/api/v1/namespaces/{ns}/pods")["items"]
    return {p["status"]["podIP"]: p for p in items if p.get("status", {}).get("podIP")}


def refused(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def cmdline(pid: int | None) -> list[str]:
    assert pid is not None
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_supervisor_runs_a_simulator_per_pod(
    cluster: LocalCluster, ns: str, tmp_path: Path
) -> None:
    api = cluster.api()
    secret = {
        "metadata": {"name": "engine-key"},
        "data": {"api-key": base64.b64encode(b"sk-from-secret").decode()},
    }
    api.create(f"/api/v1/namespaces/{ns}/secrets", secret)
    a = deployment(
        "sim-a",
        ns=ns,
        replicas=2,
        served="magistral-a",
        max_num_seqs=3,
        key_env={"valueFrom": {"secretKeyRef": {"name": "engine-key", "key": "api-key"}}},
    )
    b = deployment(
        "sim-b",
        ns=ns,
        replicas=1,
        served="magistral-b",
        max_num_seqs=5,
        key_env={"value": "sk-literal"},
        labels={SIM_UNREADY_LABEL: "true"},
    )
    for dep in (a, b):
        api.create(f"/apis/apps/v1/namespaces/{ns}/deployments", dep)

    with Supervisor(
        kubeconfig=cluster.kubeconfig, namespace=ns, sim_args=FAST, log_dir=tmp_path
    ) as sup:
        sims = sup.wait_for(lambda s: len(serving(s)) == 3, timeout=120)
        by_ip = pods_by_ip(api, ns)
        assert {s.ip for s in sims} == set(by_ip)
        served = {s.ip: s for s in sims}
        for ip, pod in by_ip.items():
            assert ip.startswith("127.")
            sim: SimulatorInfo = served[ip]
            app = pod["metadata"]["labels"]["app"]
            name, key, seqs = {
                "sim-a": ("magistral-a", "sk-from-secret", "3"),
                "sim-b": ("magistral-b", "sk-literal", "5"),
            }[app]
            auth = {"Authorization": f"Bearer {key}"}
            status, body = fetch(f"{sim.url}/v1/models", headers=auth)
            assert status == 200
            assert [m["id"] for m in json.loads(body)["data"]] == [name]
            assert fetch(f"{sim.url}/v1/models")[0] == 401  # the key is enforced
            argv = cmdline(sim.pid)
            assert argv[argv.index("--max-num-seqs") + 1] == seqs
            assert argv[argv.index("--gpu") + 1].startswith("NVIDIA-")
            assert fetch(f"{sim.url}/health")[0] == (503 if app == "sim-b" else 200)
            status, _ = fetch(
                f"{sim.url}/v1/chat/completions",
                method="POST",
                body=json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
                headers=auth,
            )
            assert status == 200
            samples = metrics(sim.url)
            assert value(samples, "vllm:request_success_total", finished_reason="stop") == 1

        # Watch events: a new pod (scale up) and a label change (sim-b turns healthy).
        api.patch(f"/apis/apps/v1/namespaces/{ns}/deployments/sim-a", {"spec": {"replicas": 3}})
        sims = sup.wait_for(lambda s: len(serving(s)) == 4, timeout=120)
        by_ip = pods_by_ip(api, ns)
        assert {s.ip for s in sims} == set(by_ip)
        (pod_b,) = (p for p in by_ip.values() if p["metadata"]["labels"]["app"] == "sim-b")
        api.patch(
            f"/api/v1/namespaces/{ns}/pods/{pod_b['metadata']['name']}",
            {"metadata": {"labels": {SIM_UNREADY_LABEL: None}}},
        )
        sup.wait_for(lambda s: all(x.healthy for x in s), timeout=60)
        health_b = f"http://{pod_b['status']['podIP']}:8000/health"
        deadline = time.monotonic() + 30  # a guard, not a latency check
        while fetch(health_b)[0] != 200:
            assert time.monotonic() < deadline, "sim-b stayed unhealthy"

        for dep in ("sim-a", "sim-b"):
            api.delete(
                f"/apis/apps/v1/namespaces/{ns}/deployments/{dep}",
                body={"propagationPolicy": "Background"},
            )
        sup.wait_for(lambda s: not s, timeout=120)
        for ip in by_ip:
            assert refused(ip, 8000)
    assert not sup.simulators()


def test_without_secret_access_the_simulator_runs_keyless(
    cluster: LocalCluster, ns: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A ServiceAccount that may watch pods but not read Secrets: no key, and a warning."""
    api = cluster.api()
    kubeconfig = cluster.kubeconfig_for_service_account(ns, "supervisor")
    rules = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
    ]
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    api.create(f"{rbac}/clusterroles", {"metadata": {"name": ns}, "rules": rules})
    api.create(
        f"{rbac}/clusterrolebindings",
        {
            "metadata": {"name": ns},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": ns,
            },
            "subjects": [{"kind": "ServiceAccount", "name": "supervisor", "namespace": ns}],
        },
    )
    dep = deployment(
        "keyless",
        ns=ns,
        replicas=1,
        served="magistral-k",
        max_num_seqs=2,
        key_env={"valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}},
    )
    api.create(f"/apis/apps/v1/namespaces/{ns}/deployments", dep)
    with (
        caplog.at_level("WARNING", logger="e2e.engine.supervisor"),
        Supervisor(kubeconfig=kubeconfig, namespace=ns, sim_args=FAST, log_dir=tmp_path) as sup,
    ):
        (sim,) = sup.wait_for(lambda s: len(serving(s)) == 1, timeout=120)
        status, body = fetch(f"{sim.url}/v1/models")  # no key needed
        assert status == 200
        assert json.loads(body)["data"][0]["id"] == "magistral-k"
        assert f"cannot read Secret {ns}/absent (403)" in caplog.text
        # A timeout says what the supervisor saw of each pod (a failed wait's context).
        with pytest.raises(TimeoutError, match=rf"pods seen: {ns}/{sim.pod}: simulator wanted"):
            sup.wait_for(lambda s: False, timeout=0.5)
        api.delete(f"/apis/apps/v1/namespaces/{ns}/deployments/keyless")
        sup.wait_for(lambda s: not s, timeout=120)
    api.delete(f"{rbac}/clusterrolebindings/{ns}")
    api.delete(f"{rbac}/clusterroles/{ns}")


def wait_status(url: str, want: int, *, timeout: float = 30.0) -> bytes:
    """Poll ``url`` until it answers ``want`` (a guard, not a latency check)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = fetch(url)
        if status == want:
            return body
        assert time.monotonic() < deadline, f"{url}: {status} {body!r}"
        time.sleep(0.2)


def check_runtime_behaviour(sim: SimulatorInfo, *, key: str, system_prompt: str) -> None:
    """What the project's middleware adds in front of the engine, seen by a client."""
    auth = {"Authorization": f"Bearer {key}"}
    ready = json.loads(wait_status(f"{sim.url}/magistral/ready", 200))
    assert ready["status"] in ("ready", "serving")
    assert fetch(f"{sim.url}/magistral/live")[0] == 200
    user = [{"role": "user", "content": "What is 2+2?"}]

    def chat(payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body = json.dumps({"model": "magistral", **payload}).encode()
        status, raw = fetch(
            f"{sim.url}/v1/chat/completions", method="POST", body=body, headers=auth
        )
        return status, json.loads(raw)

    status, answer = chat({"messages": user})  # no system prompt, no sampling parameters
    assert status == 200, answer
    message = answer["choices"][0]["message"]
    assert message["content"]
    assert "think>" not in message["content"]
    assert message["reasoning"]
    assert message["reasoning_content"] == message["reasoning"]
    inserted = [{"role": "system", "content": system_prompt}, *user]
    assert answer["usage"]["prompt_tokens"] == chat_prompt_tokens(inserted)
    own = [{"role": "system", "content": "Be brief."}, *user]
    status, answer = chat({"messages": own})
    assert status == 200
    assert answer["usage"]["prompt_tokens"] == chat_prompt_tokens(own)  # nothing inserted

    status, error = chat({"messages": user, "n": 3})
    assert status == 400
    assert error["error"]["param"] == "n"
    assert error["error"]["type"] == "invalid_request_error"
    assert "'n' is 3" in error["error"]["message"]

    client = OpenAI(base_url=f"{sim.url}/v1", api_key=key, max_retries=0, timeout=30)
    chunks = list(
        client.chat.completions.create(
            model="magistral",
            messages=[{"role": "user", "content": "What is 2+2?"}],
            stream=True,
        )
    )
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning") or "" for c in chunks if c.choices
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning
    assert content
    assert "think>" not in content + reasoning


def test_operator_rendered_pods_run_the_runtime_middleware(
    cluster: LocalCluster, ns: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The renderer's ConfigMap and Deployment: each pod's simulator runs the runtime middleware
    with that pod's config (model prompt, custom prompt); a missing ConfigMap falls back."""
    api = cluster.api()
    secret = {"metadata": {"name": "api-key"}, "data": {"key": base64.b64encode(b"sk-rt").decode()}}
    api.create(f"/api/v1/namespaces/{ns}/secrets", secret)
    custom_spec = {"inference": {"systemPrompt": {"mode": "custom", "text": CUSTOM_PROMPT}}}
    endpoints = {
        "rt-model": render({}, name="rt-model", namespace=ns),
        "rt-custom": render(custom_spec, name="rt-custom", namespace=ns),
        "rt-orphan": render({}, name="rt-orphan", namespace=ns),  # its ConfigMap never exists
    }
    for name, objects in endpoints.items():
        deployment = by_kind(objects, "Deployment")
        assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {
            "magistral.dev/pool": "reserved-h100"  # the H100 pool
        }
        if name != "rt-orphan":
            api.create(f"/api/v1/namespaces/{ns}/configmaps", by_kind(objects, "ConfigMap"))
        api.create(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment)

    with (
        caplog.at_level("INFO", logger="e2e.engine.supervisor"),
        Supervisor(
            kubeconfig=cluster.kubeconfig,
            namespace=ns,
            sim_args=FAST,
            log_dir=tmp_path,
            honor_prestop=False,
        ) as sup,
    ):
        sims = sup.wait_for(lambda s: len(serving(s)) == 3, timeout=120)
        by_endpoint = {next(e for e in endpoints if s.pod.startswith(f"{e}-")): s for s in sims}
        assert set(by_endpoint) == set(endpoints)
        model, custom, orphan = (by_endpoint[e] for e in endpoints)
        assert model.runtime_middleware
        assert custom.runtime_middleware
        assert "--middleware" in cmdline(model.pid)
        check_runtime_behaviour(
            model,
            key="sk-rt",
            system_prompt=simulated_model_prompt("mistralai/Magistral-Small-2506"),
        )
        check_runtime_behaviour(custom, key="sk-rt", system_prompt=CUSTOM_PROMPT)

        assert not orphan.runtime_middleware
        assert "--middleware" not in cmdline(orphan.pid)
        assert fetch(f"{orphan.url}/magistral/ready")[0] == 404  # the plain simulator
        orphan_config = by_kind(endpoints["rt-orphan"], "ConfigMap")["metadata"]["name"]
        assert orphan_config.startswith("rt-orphan-runtime-")  # its revision's ConfigMap
        assert f"cannot read ConfigMap {ns}/{orphan_config} (404)" in caplog.text
        assert f"{ns}/{orphan.pod}: runtime config unavailable" in caplog.text

        # Deleting a pod mid-stream: SIGTERM (no preStop here), the middleware and the engine
        # drain, the stream ends normally (the pod's --shutdown-timeout is 60 s).
        conn = http.client.HTTPConnection(model.ip, model.port, timeout=60)
        payload = {
            "model": "magistral",
            "messages": [{"role": "user", "content": "Count slowly."}],
            "stream": True,
            # 24 s at 2 ms a token: still running when SIGTERM comes, even after a stall of
            # the machine; done well within the 60 s drain.
            "max_tokens": 12000,
            "ignore_eos": True,
        }
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps(payload),
            headers={"Authorization": "Bearer sk-rt", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        assert resp.status == 200
        lines = [resp.readline().decode()]
        api.delete(f"/api/v1/namespaces/{ns}/pods/{model.pod}")
        while line := resp.readline():
            lines.append(line.decode())
        conn.close()
        text = "".join(lines)
        assert text.rstrip().endswith("data: [DONE]"), text[-300:]
        assert '"finish_reason":"length"' in text
        assert "think>" not in text
        assert "draining 1 in-flight requests" in Path(model.log_path).read_text()

        for name in endpoints:
            api.delete(
                f"/apis/apps/v1/namespaces/{ns}/deployments/{name}-reserved-h100",
                body={"propagationPolicy": "Background"},
            )
        sup.wait_for(lambda s: not s, timeout=120)


def test_no_runtime_middleware_option(cluster: LocalCluster, ns: str, tmp_path: Path) -> None:
    api = cluster.api()
    objects = render({"auth": {"disabled": True}}, name="rt-off", namespace=ns)
    api.create(f"/api/v1/namespaces/{ns}/configmaps", by_kind(objects, "ConfigMap"))
    api.create(f"/apis/apps/v1/namespaces/{ns}/deployments", by_kind(objects, "Deployment"))
    with Supervisor(
        kubeconfig=cluster.kubeconfig,
        namespace=ns,
        sim_args=FAST,
        log_dir=tmp_path,
        honor_prestop=False,
        runtime_middleware=False,
    ) as sup:
        (sim,) = sup.wait_for(lambda s: len(serving(s)) == 1, timeout=120)
        assert not sim.runtime_middleware
        assert fetch(f"{sim.url}/magistral/ready")[0] == 404
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
        status, raw = fetch(f"{sim.url}/v1/chat/completions", method="POST", body=body)
        assert status == 200, raw
        message = json.loads(raw)["choices"][0]["message"]
        assert message["content"].startswith("<think>")  # the model's raw text, not split
        assert not message.get("reasoning")
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": 3}).encode()
        status, raw = fetch(f"{sim.url}/v1/chat/completions", method="POST", body=body)
        assert status == 400  # the engine's own refusal, not the runtime's message
        assert "'n' is 3" not in json.loads(raw)["error"]["message"]
        api.delete(f"/apis/apps/v1/namespaces/{ns}/deployments/rt-off-reserved-h100")
        sup.wait_for(lambda s: not s, timeout=120)
