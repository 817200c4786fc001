"""A stand-in for the router pods' readiness, for runs without router processes."""

from __future__ import annotations

import json
import threading
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.cluster.stages import COMPONENT_LABEL, ROUTER_COMPONENT, SIM_READY_LABEL


class RouterReadiness:
    """Marks a namespace's router pods Ready, standing in for processes the test does not run.

    kwok keeps router pods Running-not-Ready until the pod supervisor's probe of their front
    passes (docs/cluster-harness.md). Tests about the operator's children rather than the data
    plane run no router processes: this labels each router pod ``magistral.dev/sim-ready=true``
    as it appears, so the endpoint can turn Ready. Tests marked ``router_processes`` run a
    Supervisor instead and get no stand-in; `bench/scale.py` uses it too.
    """

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RouterReadiness:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        selector = f"{COMPONENT_LABEL}={ROUTER_COMPONENT},!{SIM_READY_LABEL}"
        while not self.stop_event.wait(0.5):
            try:
                # Only the Running ones, read as plain JSON: with up to 1,000 router pods in
                # the namespace (bench/scale.py), building the client's models of every Pending
                # one twice a second takes CPU from the control plane being measured.
                listed: Any = self.core.list_namespaced_pod(
                    self.namespace,
                    label_selector=selector,
                    field_selector="status.phase=Running",
                    _preload_content=False,
                )
                for pod in json.loads(listed.data)["items"]:
                    meta = pod["metadata"]
                    if not meta.get("deletionTimestamp"):
                        self.core.patch_namespaced_pod(
                            meta["name"],
                            self.namespace,
                            {"metadata": {"labels": {SIM_READY_LABEL: "true"}}},
                        )
            except (ApiException, urllib3.exceptions.HTTPError):
                # The namespace is going away, a pod went, or the API server is restarting
                # (test_faults.py): try again.
                continue
