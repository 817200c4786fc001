"""The fault suite's machinery (tests/cluster/test_faults.py, docs/reliability.md).

- `KillingProxy`: a plain-HTTP reverse proxy on 127.0.0.1 in front of the API server, through
  which the operator makes every request (its kubeconfig points here and carries the chart's
  ServiceAccount token, so the audit log still names the operator). It streams responses
  (watches are long chunked responses), records the operator's writes, and SIGKILLs the
  operator when the API server's response to a chosen write arrives, before passing it on:
  the write has completed, the operator never learns it did.
- `Signature`: a write as (verb, resource, subresource, name), the same from a request the
  proxy sees and from the API server's audit log; names that differ from run to run (Events
  are named by a hash of the endpoint's uid) are normalised. A kill position is "the n-th
  occurrence of a signature", not a bare index: the runs are not perfectly deterministic.
- `capture`: the state a step ends in, comparable across runs (namespaces and uids differ).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import hashlib
import json
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web
from kubernetes import client

from e2e.cluster.kubeconfig import write_kubeconfig

from .audit import OPERATOR_USER, writes

VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
APPLIED_HASH = "magistral.dev/applied-hash"  # magistral_operator.api.labels.APPLIED_HASH_ANNOTATION
_PATH = re.compile(
    r"^/(?:api/v1|apis/[^/]+/[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<resource>[^/]+)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?/?$"
)
# Headers a proxy does not pass on (hop by hop), or that aiohttp sets itself.
_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


@dataclass(frozen=True, order=True)
class Signature:
    """A write request, comparable across runs."""

    verb: str
    resource: str
    subresource: str
    name: str

    def __str__(self) -> str:
        sub = f"/{self.subresource}" if self.subresource else ""
        return f"{self.verb} {self.resource}{sub}/{self.name}"


def normalise(resource: str, name: str) -> str:
    """An object's name with its per-run part replaced: Events are `<endpoint>.<key>`, the key
    hashed from the endpoint's uid and resourceVersion (status/announcements.py)."""
    if resource == "events" and "." in name:
        return name.split(".", 1)[0] + ".*"
    return name


def request_signature(method: str, path: str, body: bytes, namespace: str) -> Signature | None:
    """The signature of a write into `namespace`, or None for a read or another namespace."""
    verb = VERBS.get(method)
    match = _PATH.match(path)
    if verb is None or match is None or match["ns"] != namespace:
        return None
    name = match["name"] or ""
    if verb == "create" and not name and body:
        with contextlib.suppress(ValueError, AttributeError):
            name = json.loads(body).get("metadata", {}).get("name", "")
    resource = match["resource"]
    return Signature(verb, resource, match["sub"] or "", normalise(resource, name))


def audit_signatures(audit_log: Path, *, namespace: str, offset: int) -> list[Signature]:
    """The operator's writes in `namespace`, in the order the API server logged them."""
    return [
        Signature(w.verb, w.resource, w.subresource, normalise(w.resource, w.name))
        for w in writes(audit_log, user=OPERATOR_USER, namespace=namespace, offset=offset)
    ]


@dataclass(frozen=True)
class Position:
    """Kill after the `occurrence`-th (1-based) write with this signature; with a `step`, after
    the `in_step`-th one counted from that step's start instead (the harness arms the kill
    when the step begins). How many writes a step makes varies a little from run to run (a
    pass may observe a transient or not), so a count over the whole run drifts by the earlier
    steps; counted from its own step, a write keeps its place."""

    signature: Signature
    occurrence: int
    index: int  # its place in the reference run's sequence (1-based), for the record
    step: str = ""
    in_step: int = 0

    def __str__(self) -> str:
        where = f", {self.in_step} in step {self.step}" if self.step else ""
        return f"#{self.index} {self.signature} (occurrence {self.occurrence}{where})"

    def armed(self) -> Position:
        """The position the proxy counts to once armed at its step's start."""
        return replace(self, occurrence=self.in_step) if self.step else self


def positions(
    reference: list[Signature], step_of: Callable[[int], str] | None = None
) -> list[Position]:
    """Every write of the reference run as a kill position; with `step_of` (1-based index →
    the step it was made in), each also counted within its step."""
    seen: Counter[Signature] = Counter()
    in_step: Counter[tuple[str, Signature]] = Counter()
    out = []
    for index, sig in enumerate(reference, start=1):
        seen[sig] += 1
        step = step_of(index) if step_of else ""
        in_step[step, sig] += 1
        out.append(Position(sig, seen[sig], index, step, in_step[step, sig] if step else 0))
    return out


def select(all_positions: list[Position], spec: str) -> list[Position]:
    """The positions a run covers: `all`; `first` (each distinct signature's first write);
    `stride:N` (every N-th write, from the first); or a comma list of 1-based indexes and of
    signatures with their occurrence, `patch deployments/fault-reserved-h100@2` (the
    indexes move whenever the reference's order does; a signature names the same write)."""
    if spec == "all":
        return list(all_positions)
    if spec == "first":
        return [p for p in all_positions if p.occurrence == 1]
    if spec.startswith("stride:"):
        step = int(spec.split(":", 1)[1])
        return all_positions[::step]
    items = [x.strip() for x in spec.split(",") if x.strip()]
    wanted = {int(x) for x in items if x.isdigit()}
    named = {x for x in items if not x.isdigit()}
    chosen = [
        p for p in all_positions if p.index in wanted or f"{p.signature}@{p.occurrence}" in named
    ]
    unknown = named - {f"{p.signature}@{p.occurrence}" for p in chosen}
    if unknown:
        raise ValueError(f"MAGISTRAL_FAULT_POSITIONS: no such write in the reference: {unknown}")
    return chosen


def status_of(body: bytes) -> dict[str, Any]:
    """The status a status patch writes."""
    try:
        status = json.loads(body).get("status") or {}
    except (ValueError, AttributeError):
        return {}
    return status if isinstance(status, dict) else {}


def owed_keys(status: dict[str, Any]) -> set[str]:
    """The keys of the Events a status patch records as owed (status.pendingEvents)."""
    return {str(e.get("key")) for e in status.get("pendingEvents") or [] if e.get("key")}


@dataclass
class Seen:
    """One request the proxy passed on (writes: with the answer's status)."""

    method: str
    path: str
    started: float
    signature: Signature | None
    status: int = 0
    watch: bool = False


class KillingProxy:
    """Plain HTTP on 127.0.0.1 → the API server over TLS; streams; can kill on a write."""

    def __init__(self, upstream: str, ca_file: Path, *, namespace: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.ca_file = ca_file
        self.namespace = namespace
        self.port = 0
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.target: Position | None = None
        self.on_target: Callable[[], None] = lambda: None
        self.fired = threading.Event()
        self.failed = 0  # requests answered 503 because the API server was unreachable
        self.counts: Counter[Signature] = Counter()
        self.owed: set[str] = set()  # keys of status.pendingEvents written (Events owed)
        self.statuses: list[dict[str, Any]] = []  # the status patches, in order
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------------ control
    def arm(self, target: Position | None, on_target: Callable[[], None]) -> None:
        """Kill at `target` (counted from now on: the occurrence counts restart here)."""
        with self.lock:
            self.counts.clear()
            self.target = target
            self.on_target = on_target
            self.fired.clear()

    def writes(self) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.signature is not None]

    def last_write_at(self) -> float:
        with self.lock:
            times = [s.started for s in self.seen if s.signature is not None]
        return max(times, default=0.0)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> KillingProxy:
        self._thread = threading.Thread(target=self._serve, daemon=True, name="killing-proxy")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=10)

    def kubeconfig(self, path: Path, *, token: str, user: str) -> Path:
        """A kubeconfig for the operator: this proxy, the ServiceAccount's token."""
        return write_kubeconfig(
            path,
            server=f"http://127.0.0.1:{self.port}",
            ca_file=self.ca_file,
            user=user,
            token=token,
        )

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        session = loop.run_until_complete(self._setup())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.run_until_complete(session.close())
            loop.close()

    async def _setup(self) -> ClientSession:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        session = ClientSession(
            connector=TCPConnector(ssl=context, limit=0),
            timeout=ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, session)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = self._runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return session

    async def _handle(self, request: web.Request, session: ClientSession) -> web.StreamResponse:
        body = await request.read()
        sig = request_signature(request.method, request.path, body, self.namespace)
        seen = Seen(request.method, request.path, time.monotonic(), sig)
        seen.watch = request.query.get("watch") in ("true", "1")
        with self.lock:
            self.seen.append(seen)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        try:
            return await self._forward(request, session, body, headers, seen)
        except ClientError as exc:  # the API server is down (restarted by a test)
            seen.status = 503
            with self.lock:
                self.failed += 1
            return web.Response(status=503, text=f"proxy: API server unreachable: {exc}")

    async def _forward(
        self,
        request: web.Request,
        session: ClientSession,
        body: bytes,
        headers: dict[str, str],
        seen: Seen,
    ) -> web.StreamResponse:
        sig = seen.signature
        async with session.request(
            request.method,
            self.upstream + request.path_qs,
            data=body or None,
            headers=headers,
            allow_redirects=False,
        ) as upstream:
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
            if sig is None:
                response = web.StreamResponse(status=upstream.status, headers=out_headers)
                await response.prepare(request)
                try:
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
                    await response.write_eof()
                except (ClientError, ConnectionError):
                    pass  # either side went away mid-stream (a kill, a restart): the stream ends
                return response
            payload = await upstream.read()
            seen.status = upstream.status
            if sig.subresource == "status" and 200 <= upstream.status < 300:
                # Written: the Events it records are owed (a refused write, e.g. a conflict,
                # owes nothing; the next pass records them anew).
                status = status_of(body)
                with self.lock:
                    self.statuses.append(status)
                    self.owed |= owed_keys(status)
            self._count(sig)
            return web.Response(status=upstream.status, body=payload, headers=out_headers)

    def _count(self, sig: Signature) -> None:
        """Count the write whose answer has arrived; at the target, kill before passing it on."""
        with self.lock:
            self.counts[sig] += 1
            target = self.target
            hit = (
                target is not None
                and not self.fired.is_set()
                and target.signature == sig
                and target.occurrence == self.counts[sig]
            )
            if hit:
                self.fired.set()
                self.on_target()


# ----------------------------------------------------------------------- end state


SELECTOR = "magistral.dev/endpoint={}"
# Live fields the operator does not decide: the server's, the controllers'.
_DROP_META = {
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "namespace",
    "selfLink",
}
_DROP_ANNOTATIONS = {
    "deployment.kubernetes.io/revision",  # the Deployment controller's count
    APPLIED_HASH,  # carries the endpoint's uid: compared by `hash_changes`
}


def _content(obj: dict[str, Any], *, namespace: str, uid: str) -> str:
    """A child's content as the operator applied it, with the run's namespace and the
    endpoint's uid replaced (they are in ownerReferences, selectors, URLs)."""
    meta = {k: v for k, v in obj["metadata"].items() if k not in _DROP_META}
    meta["annotations"] = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k not in _DROP_ANNOTATIONS
    }
    kept = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    spec = kept.get("spec")
    if obj.get("kind") == "Service" and isinstance(spec, dict):
        # Allocated by the API server: differ from run to run.
        kept["spec"] = {k: v for k, v in spec.items() if k not in ("clusterIP", "clusterIPs")}
    text = json.dumps({"metadata": meta, **kept}, sort_keys=True)
    return text.replace(uid, "<uid>").replace(namespace, "<ns>")


@dataclass
class StepState:
    """Where a step of the scenario ended, comparable across runs."""

    children: dict[str, str]  # Kind/name -> digest of the normalised live content
    contents: dict[str, str]  # Kind/name -> the normalised live content
    applied: dict[str, str]  # Kind/name -> the operator's applied-hash annotation
    conditions: list[tuple[str, str, str]]  # (type, status, reason)
    events: Counter[str]  # reason -> decision Events posted about the endpoint so far
    flips: Counter[str]  # "Type=Status Reason" -> condition-flip Events posted so far
    announced: dict[str, str]  # condition type -> the status its last flip Event announced
    event_names: list[str]
    lost: list[str]  # Events recorded as owed in status and never posted
    unrecorded: list[str]  # Events posted that no status write recorded as owed
    status: dict[str, Any]  # a few fields of status
    pods: Counter[str] = field(default_factory=Counter)  # pods by (component, revision)


CHILD_LISTS: tuple[tuple[str, str], ...] = (
    ("Deployment", "apps"),
    ("Service", "core"),
    ("ConfigMap", "core"),
    ("PodDisruptionBudget", "policy"),
    ("NetworkPolicy", "networking"),
    ("ServiceAccount", "core"),
    ("Role", "rbac"),
    ("RoleBinding", "rbac"),
)


def _list_children(api: client.ApiClient, namespace: str, name: str) -> list[dict[str, Any]]:
    selector = SELECTOR.format(name)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    policy, net = client.PolicyV1Api(api), client.NetworkingV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    calls = {
        "Deployment": apps.list_namespaced_deployment,
        "Service": core.list_namespaced_service,
        "ConfigMap": core.list_namespaced_config_map,
        "PodDisruptionBudget": policy.list_namespaced_pod_disruption_budget,
        "NetworkPolicy": net.list_namespaced_network_policy,
        "ServiceAccount": core.list_namespaced_service_account,
        "Role": rbac.list_namespaced_role,
        "RoleBinding": rbac.list_namespaced_role_binding,
    }
    out = []
    for kind, call in calls.items():
        result = call(namespace, label_selector=selector, _preload_content=False)
        for item in json.loads(result.data)["items"]:
            item["kind"] = kind
            out.append(item)
    return out


def leftovers(api: client.ApiClient, namespace: str, name: str) -> list[str]:
    """Everything of the endpoint still in the namespace (children, ReplicaSets, Pods)."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    selector = SELECTOR.format(name)
    found = [f"{c['kind']}/{c['metadata']['name']}" for c in _list_children(api, namespace, name)]
    found += [
        f"ReplicaSet/{r.metadata.name}"
        for r in apps.list_namespaced_replica_set(namespace, label_selector=selector).items
    ]
    found += [
        f"Pod/{p.metadata.name}"
        for p in core.list_namespaced_pod(namespace, label_selector=selector).items
    ]
    return sorted(found)


def endpoint_events(api: client.ApiClient, namespace: str, name: str) -> list[Any]:
    events = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    )
    return [e for e in events.items if e.involved_object.kind == "MagistralEndpoint"]


TRANSITION = re.compile(r"^(Ready|Progressing|Degraded)=(True|False|Unknown): ")
"""The message of a condition-flip Event (status/announcements.py, `transition_note`)."""


def _flip(event: Any) -> tuple[str, str] | None:
    """(condition type, status) a condition-flip Event announces; None for a decision."""
    match = TRANSITION.match(event.message or "")
    return (match.group(1), match.group(2)) if match else None


def _posted_order(event: Any) -> int:
    # The Event's creation in etcd order: its timestamps have one-second resolution.
    return int(event.metadata.resource_version)


def summarise_events(events: list[Any]) -> dict[str, Any]:
    """StepState's `events` (decisions by reason), `flips` (condition-flip Events by what
    they announce) and `announced` (each condition's last flip, in the order posted)."""
    return {
        "events": Counter(e.reason for e in events if _flip(e) is None),
        "flips": Counter(
            f"{flip[0]}={flip[1]} {e.reason}" for e in events if (flip := _flip(e)) is not None
        ),
        "announced": {
            flip[0]: flip[1]
            for e in sorted(events, key=_posted_order)
            if (flip := _flip(e)) is not None
        },
    }


def capture(
    api: client.ApiClient,
    namespace: str,
    name: str,
    obj: dict[str, Any] | None,
    *,
    owed: set[str],
) -> StepState:
    """The end state of a step (`obj`: the endpoint, None once deleted). `owed`: the keys of
    every Event a status write recorded (from the proxy)."""
    uid = obj["metadata"]["uid"] if obj else "<none>"
    children: dict[str, str] = {}
    contents: dict[str, str] = {}
    applied: dict[str, str] = {}
    for child in _list_children(api, namespace, name):
        label = f"{child['kind']}/{child['metadata']['name']}"
        content = _content(child, namespace=namespace, uid=uid)
        children[label] = hashlib.sha256(content.encode()).hexdigest()[:16]
        contents[label] = content
        applied[label] = (child["metadata"].get("annotations") or {}).get(APPLIED_HASH, "")
    events = endpoint_events(api, namespace, name)
    keys = {e.metadata.name.split(".", 1)[1] for e in events if "." in e.metadata.name}
    status = (obj or {}).get("status") or {}
    rollout = status.get("rollout") or {}
    pods: Counter[str] = Counter()
    for pod in (
        client.CoreV1Api(api)
        .list_namespaced_pod(namespace, label_selector=SELECTOR.format(name))
        .items
    ):
        if pod.metadata.deletion_timestamp:
            continue
        labels = pod.metadata.labels or {}
        component = labels.get("app.kubernetes.io/component", "")
        pods[f"{component}/{labels.get('magistral.dev/revision', '-')}"] += 1
    return StepState(
        children=children,
        contents=contents,
        applied=applied,
        conditions=sorted(
            (c["type"], c["status"], c["reason"]) for c in status.get("conditions") or []
        ),
        **summarise_events(events),
        event_names=sorted(e.metadata.name for e in events),
        lost=sorted(f"{name}.{key}" for key in owed - keys),
        unrecorded=sorted(f"{name}.{key}" for key in keys - owed),
        status={
            "replicas": status.get("replicas"),
            "readyReplicas": status.get("readyReplicas"),
            "currentRevision": status.get("currentRevision"),
            "rolloutPhase": rollout.get("phase"),
            "lastHealthyRevision": rollout.get("lastHealthyRevision"),
            "failedRevision": rollout.get("failedRevision"),
            "pendingEvents": len(status.get("pendingEvents") or []),
        },
        pods=pods,
    )


def differences(reference: StepState, run: StepState, *, step: str) -> list[str]:
    """What differs between a step's end in the reference run and in a faulty run."""
    out = []
    if reference.children != run.children:
        keys = sorted(set(reference.children) | set(run.children))
        changed = [k for k in keys if reference.children.get(k) != run.children.get(k)]
        out.append(f"{step}: children differ: {changed}")
        first = next((k for k in changed if k in reference.contents and k in run.contents), None)
        if first is not None:
            diff = difflib.unified_diff(
                _lines(reference.contents[first]), _lines(run.contents[first]), n=0, lineterm=""
            )
            out.append(f"{step}: {first}: " + " | ".join(list(diff)[2:12]))
    if set(reference.applied) != set(run.applied) or any(not h for h in run.applied.values()):
        out.append(f"{step}: applied hashes: {reference.applied} vs {run.applied}")
    if reference.conditions != run.conditions:
        out.append(f"{step}: conditions {reference.conditions} vs {run.conditions}")
    if run.lost:
        out.append(f"{step}: Events owed and never posted: {run.lost}")
    if run.unrecorded:
        out.append(f"{step}: Events posted without a status record: {run.unrecorded}")
    if len(run.event_names) != len(set(run.event_names)):
        out.append(f"{step}: an Event name twice: {run.event_names}")
    if reference.events != run.events:
        out.append(f"{step}: events {dict(reference.events)} vs {dict(run.events)}")
    # Condition-flip Events announce what a pass observed, so their number is timing: a
    # transient state between two passes (a pod Ready before the restarted operator's first
    # pass, a canary that failed while it was down) is announced by one run and not the
    # other (a condition that appears False announces nothing, so one run may have no flip
    # of a type at all). What must hold is that the last flip of each condition agrees with
    # the condition now; the conditions themselves are compared with the reference above.
    now = {type_: status for type_, status, _ in run.conditions}
    stale = {t: s for t, s in run.announced.items() if now.get(t) not in (None, s)}
    if stale:
        out.append(f"{step}: the last flip Events {stale} disagree with the conditions {now}")
    if reference.status != run.status:
        out.append(f"{step}: status {reference.status} vs {run.status}")
    if reference.pods != run.pods:
        out.append(f"{step}: pods {dict(reference.pods)} vs {dict(run.pods)}")
    return out


def _lines(content: str) -> list[str]:
    return json.dumps(json.loads(content), indent=1, sort_keys=True).splitlines()


def hash_changes(states: list[StepState]) -> list[dict[str, str]]:
    """Per step, each child's applied hash as `same`/`new`/`gone` relative to the step
    before: the operator's content hashes compared across runs (their values carry the
    endpoint's uid, their changes do not)."""
    out = []
    before: dict[str, str] = {}
    for state in states:
        step: dict[str, str] = {}
        for label in sorted(set(before) | set(state.applied)):
            if label not in state.applied:
                step[label] = "gone"
            elif label not in before:
                step[label] = "new"
            else:
                step[label] = "same" if before[label] == state.applied[label] else "changed"
        out.append(step)
        before = state.applied
    return out
